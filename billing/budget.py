"""The programme's annual budget (docs/API.md#budget): one row per (programme, year).

`programme_budget` holds what every enterprise of the programme has reserved and been granted
in a year — the sums of the quota balance rows — and its CHECK refuses any write taking
reserved + granted past `annual`. It moves in the same transaction as the quota rows, by a
conditional UPDATE from billing/ledger.py (`transfer`, `apply_transfers`), so the budget is
enforced by the database under any concurrency, not only here.

The programme is the policy in force (its id); a policy without `[budget]` has no row and no
limit. The row is locked after the balance rows and before any claim row
(docs/ARCHITECTURE.md#lock-order): `ledger.lock_balances` takes it as its last step.

What the budget cannot fund (docs/API.md#budget): the reconciliation cuts the claim's payable
to what is left (`budget_exhausted`, with figures) and a claim left with nothing is
`waitlisted`. Funding is first-in-first-out by claim id (submission order): a claim may take
new budget only when no earlier claim of the year waits for it (`queue_head`); waiting claims
are funded at their period's next run (the daily re-run of open periods) once budget frees up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from billing.models import Claim, LedgerPosting, QuotaBalance, reserved_granted_checks
from billing.policy import DEFAULT_PROGRAMME, Policy, thresholds_crossed
from kernel import audit
from kernel.db import Base, UTCDateTime, utcnow
from kernel.vocabulary import OPEN, AuditAction, Discrepancy

Fen = int


class ProgrammeBudget(Base):
    """Reserved and granted of every enterprise in a year, against the annual budget."""

    __tablename__ = "programme_budget"

    programme_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    annual: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    granted: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = reserved_granted_checks("annual", "within_budget")


class BudgetExceeded(Exception):
    """The database refused a change that would take the budget past `annual`."""


@dataclass
class Budget:
    """A locked budget row, moved in Python beside the balances (ledger.stage)."""

    programme_id: str
    year: int
    annual: Fen
    reserved: Fen
    granted: Fen
    queue_head: int | None = None  # the earliest claim of the year waiting for budget elsewhere

    @property
    def used(self) -> Fen:
        return self.reserved + self.granted

    @property
    def remaining(self) -> Fen:
        return max(self.annual - self.used, 0)


def _insert(session: Session):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(
        ProgrammeBudget)


def lock_budgets(session: Session, policy: Policy, years) -> dict[int, Budget]:
    """Create missing budget rows (from the balance rows' sums) and lock them, in year order.

    No `[budget]`: {} (unlimited). A policy whose `annual` is below what the year already
    holds keeps the row at what it holds: nothing is taken back, nothing new is funded.
    """
    if policy.budget_annual is None:
        return {}
    t = ProgrammeBudget.__table__
    out: dict[int, Budget] = {}
    for year in sorted(set(years)):
        stmt = (select(t.c.annual, t.c.reserved, t.c.granted)
                .where(t.c.programme_id == policy.id, t.c.year == year).with_for_update())
        row = session.execute(stmt).first()
        if row is None:
            q = QuotaBalance.__table__
            reserved, granted = session.execute(select(func.coalesce(func.sum(q.c.reserved), 0),
                                                       func.coalesce(func.sum(q.c.granted), 0))
                                                .where(q.c.year == year, q.c.programme_id == policy.programme)).one()
            session.execute(_insert(session).on_conflict_do_nothing(index_elements=["programme_id", "year"]),
                            [{"programme_id": policy.id, "year": year, "reserved": int(reserved),
                              "granted": int(granted),
                              "annual": max(policy.budget_annual, int(reserved) + int(granted)),
                              "updated_at": utcnow()}])
            row = session.execute(stmt).one()
        annual, reserved, granted = row
        wanted = max(policy.budget_annual, reserved + granted)
        if wanted != annual:
            session.execute(update(t).where(t.c.programme_id == policy.id, t.c.year == year)
                            .values(annual=wanted, updated_at=utcnow()))
        out[year] = Budget(policy.id, year, wanted, reserved, granted)
    return out


def within(budget: Budget, dr: Fen, dg: Fen) -> bool:
    return (budget.reserved + dr >= 0 and budget.granted + dg >= 0
            and budget.reserved + budget.granted + dr + dg <= budget.annual)


def apply(session: Session, changes: dict[tuple[str, int], tuple[Fen, Fen]]) -> None:
    """Add (Δreserved, Δgranted) to each (programme, year) budget row with a conditional
    UPDATE, in the ledger's transaction; BudgetExceeded if the database refuses one."""
    params = [{"b_programme": p, "b_year": y, "d_reserved": dr, "d_granted": dg}
              for (p, y), (dr, dg) in sorted(changes.items()) if dr or dg]
    if not params:
        return
    t = ProgrammeBudget.__table__
    dr, dg = bindparam("d_reserved"), bindparam("d_granted")
    result = session.execute(
        update(t).where(t.c.programme_id == bindparam("b_programme"), t.c.year == bindparam("b_year"),
                        t.c.reserved + dr >= 0, t.c.granted + dg >= 0,
                        t.c.reserved + t.c.granted + dr + dg <= t.c.annual)
        .values(reserved=t.c.reserved + dr, granted=t.c.granted + dg, updated_at=utcnow()),
        params)
    if result.rowcount != len(params):
        raise BudgetExceeded(f"budget refused {len(params) - result.rowcount} of {len(params)} changes")


# --- the reconciliation's use: cut, waitlist, first-in-first-out -----------------------------

def _waiting(session: Session, year: int):
    """Open claims of `year` carrying budget_exhausted (waitlisted, or cut and short)."""
    return (select(Claim.id, Claim.period, Claim.discrepancies)
            .where(Claim.period.like(f"{year}-%"), Claim.status.in_(OPEN),
                   cast(Claim.discrepancies, String).like(f"%{Discrepancy.BUDGET_EXHAUSTED}%")))


def note_queue(session: Session, budget: Budget | None, period: str) -> None:
    """Remember the earliest claim of the year, in another period, waiting for budget: claims
    submitted after it take no new budget before it is funded (first in, first out)."""
    if budget is None:
        return
    stmt = _waiting(session, budget.year).where(Claim.period != period).order_by(Claim.id).limit(1)
    row = session.execute(stmt).first()
    budget.queue_head = row.id if row else None


def fundable(budget: Budget | None, claim_id: int, wanted: Fen) -> Fen:
    """How much of `wanted` new fen the budget funds for this claim (pure): all without a
    budget; nothing behind an earlier waiting claim; else up to what remains."""
    if budget is None or wanted <= 0:
        return wanted
    if budget.queue_head is not None and claim_id > budget.queue_head:
        return 0
    return min(wanted, budget.remaining)


def holdable(session: Session, budget: Budget | None) -> Fen | None:
    """How much new budget a redemption's hold may take: what remains, or nothing while any
    claim of the year waits for budget (they came first); None without a budget (unlimited)."""
    if budget is None:
        return None
    if session.execute(_waiting(session, budget.year).limit(1)).first() is not None:
        return 0
    return budget.remaining


def exhausted(budget: Budget, payable_before: Fen, payable: Fen, remaining_before: Fen) -> dict[str, Any]:
    """The budget_exhausted discrepancy, with its figures (docs/API.md#budget)."""
    behind = budget.queue_head is not None and remaining_before > 0
    return {"code": Discrepancy.BUDGET_EXHAUSTED,
            "message": (f"Waiting behind clm_{budget.queue_head} for budget" if behind else
                        f"The programme's {budget.year} budget funds {payable} of {payable_before} fen"),
            "payable_before_budget": payable_before, "payable": payable,
            "waitlisted": payable_before - payable, "budget_annual": budget.annual,
            "budget_remaining": remaining_before}


def waitlisted(session: Session, year: int) -> tuple[Fen, int]:
    """(fen waiting, claims waiting) for budget in `year`."""
    total = count = 0
    for _id, _period, found in session.execute(_waiting(session, year)):
        for d in found or []:
            if d.get("code") == Discrepancy.BUDGET_EXHAUSTED:
                total += int(d.get("waitlisted", 0))
                count += 1
    return total, count


# --- thresholds (docs/API.md#thresholds) ---------------------------------------------------

def raise_crossings(session: Session, policy: Policy, before: dict[tuple[str, int], Fen], balances,
                    budget_before: dict[int, Fen], budgets: dict[int, Budget]) -> None:
    """Audit entries (hence events, kernel/outbox.py) for every threshold crossed since `before`:
    `quota.threshold_reached` per enterprise-year, `budget.threshold_reached` per year. The
    object's id names the threshold (`<uscc>/<year>/<t>`, `<programme>/<year>/<t>`): one object
    per crossing, as the outbox renders one object per id."""
    for key in sorted(before):
        b = balances[key]
        for t in thresholds_crossed(policy.quota_thresholds, b.cap, before[key], b.reserved + b.granted):
            audit.append(session, AuditAction.QUOTA_THRESHOLD_REACHED, "quota", f"{key[0]}/{key[1]}/{t}", after={
                "enterprise_uscc": key[0], "year": key[1], "threshold": t, "cap": b.cap,
                "reserved": b.reserved, "granted": b.granted, "currency": "CNY"})
    for year in sorted(budget_before):
        g = budgets[year]
        for t in thresholds_crossed(policy.budget_thresholds, g.annual, budget_before[year], g.used):
            audit.append(session, AuditAction.BUDGET_THRESHOLD_REACHED, "budget", f"{g.programme_id}/{year}/{t}",
                         after={"year": year, "threshold": t, "annual": g.annual, "reserved": g.reserved,
                                "granted": g.granted, "remaining": g.remaining, "currency": "CNY"})


# --- reading: figures and the forecast -----------------------------------------------------

FORECAST_DAYS = 90


def forecast_exhausted_on(annual: Fen, used: Fen, daily_use: dict[date, Fen], today: date,
                          days: int = FORECAST_DAYS) -> date | None:
    """The day the budget runs out at the pace of the last `days` days (pure).

    Pace = net use (reserve − release − clawback) over the days up to and including `today`,
    divided by `days`. Already exhausted: today. No budget or no use in the window: None.
    """
    if used >= annual:
        return today
    start = today - timedelta(days=days - 1)
    pace = sum(v for d, v in daily_use.items() if start <= d <= today)
    if pace <= 0:
        return None
    left = annual - used
    return today + timedelta(days=-(-left * days // pace))  # ceiling: the day it is spent


def daily_use(session: Session, year: int, since: datetime, programme_id: str | None = None
              ) -> dict[date, Fen]:
    """Net use per UTC day since `since`: what moved into reserved+granted from available
    (claims' reservations and redemptions' holds, less releases and clawbacks); one
    programme's only when `programme_id` is given."""
    signed = {"reserve": 1, "release": -1, "clawback": -1, "hold": 1, "hold_void": -1}
    out: dict[date, Fen] = {}
    rows = session.execute(select(LedgerPosting.created_at, LedgerPosting.kind, LedgerPosting.amount)
                           .where(LedgerPosting.year == year, LedgerPosting.created_at >= since,
                                  LedgerPosting.account == "available",
                                  LedgerPosting.kind.in_(list(signed)),
                                  *([LedgerPosting.programme_id == programme_id] if programme_id else [])))
    for at, kind, amount in rows:
        day = at.date()
        out[day] = out.get(day, 0) + signed[kind] * abs(int(amount))
    return out


@dataclass
class Figures:
    year: int
    annual: Fen | None
    reserved: Fen
    granted: Fen
    waitlisted: Fen
    waitlisted_claims: int
    forecast_exhausted_on: date | None

    @property
    def remaining(self) -> Fen | None:
        return None if self.annual is None else max(self.annual - self.reserved - self.granted, 0)


def figures(session: Session, policy: Policy, year: int, today: date, *, waitlist: bool = True) -> Figures:
    """The budget of `year` as GET /v1/budget shows it (no lock: a read): `policy`'s programme's
    (docs/POLICY.md#programmes). Claims wait for the default programme's budget only, so another
    programme's figures pass `waitlist=False` (nothing waitlisted)."""
    row = session.get(ProgrammeBudget, (policy.id, year))
    if row is not None:
        reserved, granted = row.reserved, row.granted
    else:
        q = QuotaBalance.__table__
        reserved, granted = (int(v) for v in session.execute(
            select(func.coalesce(func.sum(q.c.reserved), 0), func.coalesce(func.sum(q.c.granted), 0))
            .where(q.c.year == year, q.c.programme_id == policy.programme)).one())
    annual = policy.budget_annual
    if annual is not None and row is not None:
        annual = row.annual
    fen, count = waitlisted(session, year) if waitlist else (0, 0)
    forecast = None
    if annual is not None:
        since = datetime.combine(today - timedelta(days=FORECAST_DAYS - 1), datetime.min.time(), UTC)
        forecast = forecast_exhausted_on(annual, reserved + granted, daily_use(session, year, since, policy.programme), today)
    return Figures(year, annual, reserved, granted, fen, count, forecast)


def verify_rows(session: Session) -> list[tuple[str, int | None, str]]:
    """Each budget row against its programme's postings (docs/POLICY.md#programmes): a row of a
    programme run beside the default one (its id is its postings' key) against those; of the
    default programme's rows (keyed by the policy id of the time) the latest-updated of each year
    against the default programme's postings. (what, year, detail) for every breach
    (billing.ledger.verify)."""
    breaches = []
    derived: dict[tuple[str, int, str], int] = {}
    for programme, year, account, amount in session.execute(
            select(LedgerPosting.programme_id, LedgerPosting.year, LedgerPosting.account,
                   func.sum(LedgerPosting.amount))
            .where(LedgerPosting.account.in_(["reserved", "granted"]))
            .group_by(LedgerPosting.programme_id, LedgerPosting.year, LedgerPosting.account)):
        derived[(programme, year, account)] = int(amount)
    others = ({p for p, _y, _a in derived} | set(session.scalars(select(QuotaBalance.programme_id).distinct()))
              ) - {DEFAULT_PROGRAMME}
    latest: dict[tuple[str, int], ProgrammeBudget] = {}
    for row in session.scalars(select(ProgrammeBudget).order_by(ProgrammeBudget.updated_at)):
        latest[(row.programme_id if row.programme_id in others else DEFAULT_PROGRAMME, row.year)] = row
    for (key, year), row in sorted(latest.items()):
        reserved = derived.get((key, year, "reserved"), 0)
        granted = derived.get((key, year, "granted"), 0)
        if (row.reserved, row.granted) != (reserved, granted):
            breaches.append(("budget_mismatch", year, f"{row.programme_id}: row reserved {row.reserved}, "
                             f"granted {row.granted} != postings {reserved}, {granted}"))
        if reserved + granted > row.annual:
            breaches.append(("budget_exceeded", year, f"{row.programme_id}: reserved {reserved} + "
                             f"granted {granted} > annual {row.annual}"))
    return breaches
