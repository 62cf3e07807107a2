"""The double-entry quota ledger (TigerBeetle-style): append-only postings, derived balances.

Accounts per enterprise-year: `cap_source` (where the cap comes from), `available`,
`reserved` and `granted`. Every movement is a transfer of two postings that sum to zero:

  open / cap_change   cap_source → available
  reserve             available  → reserved
  release             reserved   → available
  grant               reserved   → granted
  clawback            granted    → available
  hold                available  → reserved    a redemption's pending transfer (two-phase:
  hold_void           reserved   → available   voided — released, expired, rejected — or
  hold_post           reserved   → granted     posted when its settlement is approved)

A hold's postings carry its `redemption_id`, so verify() can check each redemption's pending
amount against its postings (docs/API.md#redemptions).

`quota_balance` holds reserved and granted in step with the postings, updated in the same
transaction by conditional UPDATEs, and its CHECK constraints refuse any write that would
take reserved + granted past the cap: the cap is enforced by the database, not only here.
The programme's budget row (billing/budget.py) moves in the same statements' transaction, by
the same kind of conditional UPDATE, when the policy has a `[budget]`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from billing import budget as budgets
from billing.models import LedgerPosting, QuotaBalance
from billing.policy import DEFAULT_PROGRAMME, Policy, cap_for, programme_covers, remaining
from kernel.billing_periods import SHARED, lock_period
from kernel.db import utcnow
from kernel.periods import period_year
from metering.models import Enterprise, ModelFiling

T = TypeVar("T", bound=Any)

Fen = int

@dataclass(frozen=True)
class Move:
    """What one kind of transfer does: the account pair, and how the balance row's reserved
    and granted columns change per fen transferred."""

    debit: str
    credit: str
    reserved: int = 0
    granted: int = 0


# The one table of transfer kinds: the single-row path (transfer) and the batch path
# (apply_transfers) both read it, and both refuse a result outside the same bounds.
MOVES = {
    "open": Move("cap_source", "available"),
    "cap_change": Move("cap_source", "available"),
    "reserve": Move("available", "reserved", reserved=1),
    "release": Move("reserved", "available", reserved=-1),
    "grant": Move("reserved", "granted", reserved=-1, granted=1),
    "clawback": Move("granted", "available", granted=-1),
    # A redemption's hold: the pending leg of a two-phase transfer, then voided or posted.
    "hold": Move("available", "reserved", reserved=1),
    "hold_void": Move("reserved", "available", reserved=-1),
    "hold_post": Move("reserved", "granted", reserved=-1, granted=1),
}
HOLD_KINDS = ("hold", "hold_void", "hold_post")
TRANSFERS = {kind: (m.debit, m.credit) for kind, m in MOVES.items()}  # kind -> (debit, credit)


class CapExceeded(Exception):
    """The database refused a reservation that would pass the cap."""


@dataclass
class Balance:
    enterprise_uscc: str
    year: int
    cap: Fen
    cap_basis: str
    reserved: Fen
    granted: Fen
    policy_id: str
    budget: budgets.Budget | None = None  # the programme's locked budget row; None: unlimited
    programme_id: str = ""  # whose quota (docs/POLICY.md#programmes); set by lock_balances and quota_of

    @property
    def remaining(self) -> Fen:
        return remaining(self.cap, self.granted, self.reserved)


def filing_dates(session: Session, usccs: Iterable[str]) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    usccs = list(usccs)
    if usccs:
        for uscc, obtained_on in session.execute(
            select(ModelFiling.enterprise_uscc, ModelFiling.obtained_on).where(
                ModelFiling.enterprise_uscc.in_(usccs))
        ):
            out[uscc].append(obtained_on)
    return out


@dataclass(frozen=True)
class Transfer:
    """One transfer for post_many / apply_transfers."""

    kind: str
    enterprise_uscc: str
    year: int
    amount: Fen
    claim_id: int | None
    policy_id: str
    reason: str
    redemption_id: int | None = None
    programme_id: str | None = None  # the budget row it also moves (apply_transfers)
    quota_programme: str | None = None  # whose balance row it moves; None: the policy's (policy_id)


def new_entry_id() -> str:
    """A transfer's id, shared by its two postings."""
    return uuid.uuid4().hex


def post_many(session: Session, transfers: Iterable[Transfer]) -> None:
    """Append the two legs of each transfer (they sum to zero), all with one multi-row INSERT."""
    rows = []
    now = utcnow()
    for t in transfers:
        if t.amount <= 0:
            raise ValueError(f"{t.kind}: transfer amount must be positive, got {t.amount}")
        move = MOVES[t.kind]
        common = dict(entry_id=new_entry_id(), enterprise_uscc=t.enterprise_uscc, year=t.year,
                      kind=t.kind, claim_id=t.claim_id, policy_id=t.policy_id,
                      programme_id=t.quota_programme or DEFAULT_PROGRAMME, reason=t.reason,
                      redemption_id=t.redemption_id, created_at=now)
        rows += [dict(account=move.debit, amount=-t.amount, **common),
                 dict(account=move.credit, amount=t.amount, **common)]
    if rows:
        session.execute(LedgerPosting.__table__.insert(), rows)


def _within_bounds(q, dr, dg):
    """The balance row stays inside its bounds after adding (dr, dg): reserved and granted not
    below 0, reserved + granted not above the cap (the CHECK constraints say the same)."""
    return and_(q.c.reserved + dr >= 0, q.c.granted + dg >= 0, q.c.reserved + q.c.granted + dr + dg <= q.c.cap)


def apply_transfers(session: Session, transfers: list[Transfer]) -> None:
    """Many reserve / release / grant / clawback transfers at once, for balances locked with
    lock_balances() and already moved in Python (Balance) by the caller.

    The balance rows get one conditional UPDATE each with the net change (one executemany);
    a row whose result would leave the bounds — reserved or granted below 0, reserved +
    granted above the cap — is refused as one-by-one reserve()/release() would refuse it.
    """
    net: dict[tuple[str, int, str], list[int]] = {}
    programme: dict[tuple[str, int], list[int]] = {}
    for t in transfers:
        move = MOVES[t.kind]
        for d in ([net.setdefault((t.enterprise_uscc, t.year, t.quota_programme or DEFAULT_PROGRAMME), [0, 0])]
                  + ([programme.setdefault((t.programme_id, t.year), [0, 0])] if t.programme_id else [])):
            d[0] += move.reserved * t.amount
            d[1] += move.granted * t.amount
    params = [{"b_uscc": u, "b_year": y, "b_programme": p, "d_reserved": dr, "d_granted": dg}
              for (u, y, p), (dr, dg) in net.items() if dr or dg]
    if params:
        q = QuotaBalance.__table__
        dr, dg = bindparam("d_reserved"), bindparam("d_granted")
        result = session.execute(
            update(q)
            .where(q.c.enterprise_uscc == bindparam("b_uscc"), q.c.year == bindparam("b_year"),
                   q.c.programme_id == bindparam("b_programme"), _within_bounds(q, dr, dg))
            .values(reserved=q.c.reserved + dr, granted=q.c.granted + dg),
            params,
        )
        if result.rowcount != len(params):
            raise CapExceeded(f"quota refused {len(params) - result.rowcount} of {len(params)} batched changes")
    budgets.apply(session, {k: (dr, dg) for k, (dr, dg) in programme.items()})
    post_many(session, transfers)


def _insert_ignore(session: Session):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(
        QuotaBalance)


def lock_in_order(session: Session, policy: Policy, model: type[T], row_id: int) -> T | None:
    """The `model` row (a claim or a redemption: `enterprise_uscc` and `period` columns),
    locked in the one lock order (docs/ARCHITECTURE.md#lock-order): its period's row (shared),
    its balance row, then the row itself — re-read, so its status is the committed one; None
    when there is no such row. Its enterprise and period never change, so the unlocked first
    read that names the rows to lock cannot be stale in what matters."""
    found = session.execute(select(model.enterprise_uscc, model.period)
                            .where(model.id == row_id)).first()
    if found is None:
        return None
    uscc, period = found
    lock_period(session, period, SHARED)
    lock_balances(session, policy, [(uscc, period_year(period))])  # the default programme's row
    return session.scalars(select(model).where(model.id == row_id).with_for_update()
                           .execution_options(populate_existing=True)).first()


LOCK_CHUNK = 1000  # balance rows per statement: a 10,000-row IN list of pairs overflows PostgreSQL's parser stack


def cap_raise(current: Fen, wanted: Fen, basis: str) -> tuple[str, Fen, str] | None:
    """The transfer (kind, amount, reason) that brings a balance row's cap from `current` up to
    `wanted`; None when it needs none (caps never shrink)."""
    if wanted <= current:
        return None
    return ("open" if current == 0 else "cap_change"), wanted - current, f"cap {basis}: {wanted} fen"


def lock_balances(session: Session, policy: Policy, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Balance]:
    """Create missing balance rows, bring caps up to date with the filings, and lock the rows.

    Rows are locked in (uscc, year) order so concurrent reconciliations cannot deadlock; a
    long list is taken in chunks of LOCK_CHUNK keys, still in that order. Then, last, the
    programme's budget rows of those years (billing/budget.py; docs/ARCHITECTURE.md#lock-order),
    which every returned Balance carries. The rows are `policy`'s programme's (its id;
    docs/POLICY.md#programmes); a caller moving several programmes locks them one programme
    after another, in the order of `Programmes.all`. Core statements
    throughout: a month's 10,000 enterprises never become ORM objects.
    """
    keys = sorted(set(keys))
    if not keys:
        return {}
    q = QuotaBalance.__table__
    balances: dict[tuple[str, int], Balance] = {}
    for start in range(0, len(keys), LOCK_CHUNK):
        chunk = keys[start:start + LOCK_CHUNK]
        filings = filing_dates(session, {u for u, _ in chunk})
        wanted = {k: cap_for(policy, k[1], filings.get(k[0], [])) for k in chunk}
        session.execute(
            _insert_ignore(session).on_conflict_do_nothing(
                index_elements=["enterprise_uscc", "year", "programme_id"]),
            [{"enterprise_uscc": u, "year": y, "programme_id": policy.programme, "cap": 0,
              "cap_basis": wanted[(u, y)][1], "reserved": 0, "granted": 0, "policy_id": policy.id}
             for u, y in chunk],
        )
        stmt = (select(q.c.enterprise_uscc, q.c.year, q.c.cap, q.c.cap_basis, q.c.reserved, q.c.granted,
                       q.c.policy_id)
                .where(tuple_(q.c.enterprise_uscc, q.c.year).in_(chunk), q.c.programme_id == policy.programme)
                .order_by(q.c.enterprise_uscc, q.c.year)
                .with_for_update())
        opened: list[Transfer] = []
        raised: list[dict] = []
        for row in session.execute(stmt):
            b = Balance(*row, programme_id=policy.programme)
            cap, basis = wanted[(b.enterprise_uscc, b.year)]
            raise_ = cap_raise(b.cap, cap, basis)
            if raise_ is not None:  # a new filing raises the cap; caps never shrink below what is used
                opened.append(Transfer(raise_[0], b.enterprise_uscc, b.year, raise_[1], None, policy.id,
                                       raise_[2], quota_programme=policy.programme))
                raised.append({"b_uscc": b.enterprise_uscc, "b_year": b.year, "b_programme": policy.programme, "cap": cap,
                               "cap_basis": basis, "policy_id": policy.id})
                b.cap, b.cap_basis = cap, basis
            balances[(b.enterprise_uscc, b.year)] = b
        if raised:
            session.execute(update(q).where(q.c.enterprise_uscc == bindparam("b_uscc"),
                                            q.c.year == bindparam("b_year"),
                                            q.c.programme_id == bindparam("b_programme")), raised)
            post_many(session, opened)
    locked = budgets.lock_budgets(session, policy, {y for _, y in keys})
    for b in balances.values():
        b.budget = locked.get(b.year)
    return balances


def transfer(session: Session, kind: str, b: Balance, amount: Fen, *, claim_id: int | None,
             policy_id: str, reason: str, redemption_id: int | None = None) -> None:
    """The one write path: move `amount` fen between the accounts of `kind` (MOVES) for the
    locked balance `b`: one conditional UPDATE of the balance row (refused outside its bounds,
    CapExceeded) and the two postings. A zero amount changes nothing."""
    if amount == 0:
        return
    move = MOVES[kind]
    dr, dg = move.reserved * amount, move.granted * amount
    q = QuotaBalance.__table__
    result = session.execute(
        update(q)
        .where(q.c.enterprise_uscc == b.enterprise_uscc, q.c.year == b.year,
               q.c.programme_id == (b.programme_id or DEFAULT_PROGRAMME), _within_bounds(q, dr, dg))
        .values(reserved=q.c.reserved + dr, granted=q.c.granted + dg)
    )
    if result.rowcount != 1:
        raise CapExceeded(f"quota {b.enterprise_uscc}/{b.year} refused the change")
    if b.budget is not None:
        budgets.apply(session, {(b.budget.programme_id, b.year): (dr, dg)})
        b.budget.reserved += dr
        b.budget.granted += dg
    b.reserved += dr
    b.granted += dg
    post_many(session, [Transfer(kind, b.enterprise_uscc, b.year, amount, claim_id, policy_id, reason,
                                 redemption_id=redemption_id, quota_programme=b.programme_id or None)])


def stage(transfers: list[Transfer], kind: str, b: Balance, amount: Fen, *, claim_id: int | None,
          policy_id: str, reason: str) -> None:
    """The batch form of transfer(): move the locked balance `b` in Python, refused outside the
    same bounds, and queue the transfer for apply_transfers() (which writes the row's net change
    and the postings). A zero amount changes nothing."""
    if amount == 0:
        return
    move = MOVES[kind]
    dr, dg = move.reserved * amount, move.granted * amount
    if b.reserved + dr < 0 or b.granted + dg < 0 or b.reserved + b.granted + dr + dg > b.cap:
        raise CapExceeded(f"quota {b.enterprise_uscc}/{b.year} refused the change")
    if b.budget is not None:
        if not budgets.within(b.budget, dr, dg):
            raise budgets.BudgetExceeded(f"budget {b.budget.programme_id}/{b.year} refused the change")
        b.budget.reserved += dr
        b.budget.granted += dg
    b.reserved += dr
    b.granted += dg
    transfers.append(Transfer(kind, b.enterprise_uscc, b.year, amount, claim_id, policy_id, reason,
                              programme_id=b.budget.programme_id if b.budget is not None else None,
                              quota_programme=b.programme_id or None))


def reserve(session: Session, b: Balance, amount: Fen, **why) -> None:
    """available → reserved (keyword arguments: claim_id, policy_id, reason)."""
    transfer(session, "reserve", b, amount, **why)


def release(session: Session, b: Balance, amount: Fen, **why) -> None:
    """reserved → available."""
    transfer(session, "release", b, amount, **why)


def grant(session: Session, b: Balance, amount: Fen, **why) -> None:
    """reserved → granted."""
    transfer(session, "grant", b, amount, **why)


def clawback(session: Session, b: Balance, amount: Fen, **why) -> None:
    """granted → available."""
    transfer(session, "clawback", b, amount, **why)


def quota_of(policy: Policy, uscc: str, year: int, row, filings: Iterable) -> Balance:
    """The definition of an enterprise's quota for a year (docs/ARCHITECTURE.md#rule-homes):
    the cap and its basis derived from the filings now (cap_for) — whether or not the year has
    a balance row, so a filing recorded at any time shows at the next read (docs/API.md#quota) —
    with the balance row's reserved and granted (`row`: anything with reserved, granted and
    policy_id; None: nothing used yet)."""
    cap, basis = cap_for(policy, year, filings)
    if row is not None:
        return Balance(uscc, year, cap, basis, row.reserved, row.granted, row.policy_id,
                       programme_id=policy.programme)
    return Balance(uscc, year, cap, basis, 0, 0, policy.id, programme_id=policy.programme)


def read_quota(session: Session, policy: Policy, uscc: str, year: int) -> Balance | None:
    """One enterprise's quota (quota_of). None when the enterprise is not registered."""
    row = session.scalars(select(QuotaBalance).where(
        QuotaBalance.enterprise_uscc == uscc, QuotaBalance.year == year,
        QuotaBalance.programme_id == policy.programme)).first()
    if row is None and session.get(Enterprise, uscc) is None:
        return None
    return quota_of(policy, uscc, year, row, filing_dates(session, [uscc]).get(uscc, []))


def quotas(session: Session, policy: Policy, year: int) -> dict[str, Balance]:
    """Every registered enterprise's quota for `year` (quota_of), by USCC: three queries."""
    usccs = list(session.scalars(select(Enterprise.uscc).order_by(Enterprise.uscc)))
    rows = {r.enterprise_uscc: r for r in session.scalars(select(QuotaBalance).where(
        QuotaBalance.year == year, QuotaBalance.programme_id == policy.programme))}
    filings = filing_dates(session, usccs)
    return {u: quota_of(policy, u, year, rows.get(u), filings.get(u, [])) for u in usccs}


def programme_quotas(session: Session, programmes: Iterable[Policy], uscc: str, year: int
                     ) -> list[tuple[Policy, Balance]] | None:
    """The enterprise's quota under each programme that covers it (its county and the
    programme's enterprise list: docs/POLICY.md#programmes), in `programmes`' order, each
    read as `read_quota` reads it. None when the enterprise is not registered."""
    enterprise = session.get(Enterprise, uscc)
    if enterprise is None:
        return None
    return [(p, read_quota(session, p, uscc, year)) for p in programmes  # type: ignore[misc]
            if programme_covers(p, enterprise.county, uscc)]


@dataclass(frozen=True)
class Combined:
    """The sums of an enterprise's quotas over its programmes (docs/API.md#quota-programmes):
    an upper bound of what it can still receive, since 就高不重复 pays one programme of several."""

    programmes: list[str]
    cap: Fen
    granted: Fen
    reserved: Fen
    remaining: Fen

    @classmethod
    def of(cls, quotas: Iterable[tuple[Policy, Balance]]) -> Combined:
        quotas = list(quotas)
        balances = [b for _p, b in quotas]
        return cls([p.id for p, _b in quotas], sum(b.cap for b in balances),
                   sum(b.granted for b in balances), sum(b.reserved for b in balances),
                   sum(b.remaining for b in balances))


@dataclass
class Breach:
    what: str
    enterprise_uscc: str | None = None
    year: int | None = None
    detail: str = ""


@dataclass
class VerifyReport:
    postings: int = 0
    entries: int = 0
    balances: int = 0
    breaches: list[Breach] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches


def verify(session: Session) -> VerifyReport:
    """Check the invariants from the postings alone, with aggregate queries."""
    report = VerifyReport()
    report.postings = session.scalar(select(func.count()).select_from(LedgerPosting)) or 0
    unbalanced = session.execute(
        select(LedgerPosting.entry_id, func.sum(LedgerPosting.amount), func.count())
        .group_by(LedgerPosting.entry_id)
        .having((func.sum(LedgerPosting.amount) != 0) | (func.count() != 2))
    ).all()
    report.entries = session.scalar(select(func.count(func.distinct(LedgerPosting.entry_id)))) or 0
    for entry_id, total, legs in unbalanced:
        report.breaches.append(Breach("unbalanced_entry", detail=f"entry {entry_id}: {legs} legs sum to {total}"))
    total = session.scalar(select(func.coalesce(func.sum(LedgerPosting.amount), 0)))
    if total != 0:
        report.breaches.append(Breach("postings_do_not_balance", detail=f"all postings sum to {total}"))

    derived: dict[tuple[str, int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for uscc, year, programme, account, amount in session.execute(
        select(LedgerPosting.enterprise_uscc, LedgerPosting.year, LedgerPosting.programme_id,
               LedgerPosting.account, func.sum(LedgerPosting.amount))
        .group_by(LedgerPosting.enterprise_uscc, LedgerPosting.year, LedgerPosting.programme_id,
                  LedgerPosting.account)
    ):
        derived[(uscc, year, programme)][account] = int(amount)

    rows = {(r.enterprise_uscc, r.year, r.programme_id): r for r in session.scalars(select(QuotaBalance))}
    report.balances = len(rows)
    for key in sorted(set(rows) | set(derived)):
        uscc, year, _programme = key
        d = derived.get(key, {})
        row = rows.get(key)
        cap = -d.get("cap_source", 0)
        for account in ("available", "reserved", "granted"):
            if d.get(account, 0) < 0:
                report.breaches.append(Breach("negative_balance", uscc, year, f"{account} = {d[account]}"))
        if d.get("reserved", 0) + d.get("granted", 0) > cap:
            report.breaches.append(Breach("cap_exceeded", uscc, year,
                                          f"reserved {d.get('reserved', 0)} + granted {d.get('granted', 0)} > cap {cap}"))
        if row is None:
            report.breaches.append(Breach("missing_balance_row", uscc, year))
            continue
        mismatches = [
            f"{name}: row {getattr(row, name)} != postings {value}"
            for name, value in (("cap", cap), ("reserved", d.get("reserved", 0)), ("granted", d.get("granted", 0)))
            if getattr(row, name) != value
        ]
        if d.get("available", 0) != cap - d.get("reserved", 0) - d.get("granted", 0):
            mismatches.append("available != cap - reserved - granted")
        if mismatches:
            report.breaches.append(Breach("balance_mismatch", uscc, year, "; ".join(mismatches)))
    report.breaches += verify_holds(session)
    for what, year, detail in budgets.verify_rows(session):
        report.breaches.append(Breach(what, None, year, detail))
    return report


def verify_holds(session: Session) -> list[Breach]:
    """Each redemption's hold against its postings (docs/API.md#redemptions): what its postings
    leave in `reserved` is its `held`, what they leave in `granted` is its subsidy once settled
    (else 0), and no hold posting names a redemption that does not exist. Two aggregate queries."""
    from billing.redemption_models import (
        Redemption,  # the model sits beside this module's; no cycle
    )

    sums: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rid, account, amount in session.execute(
        select(LedgerPosting.redemption_id, LedgerPosting.account, func.sum(LedgerPosting.amount))
        .where(LedgerPosting.redemption_id.is_not(None))
        .group_by(LedgerPosting.redemption_id, LedgerPosting.account)
    ):
        sums[rid][account] = int(amount)
    breaches = []
    seen = set()
    for rid, uscc, year, status, held, subsidy in session.execute(
        select(Redemption.id, Redemption.enterprise_uscc, Redemption.year, Redemption.status,
               Redemption.held, Redemption.subsidy)
    ):
        seen.add(rid)
        d = sums.get(rid, {})
        granted = subsidy if status == "settled" else 0
        if d.get("reserved", 0) != held or d.get("granted", 0) != granted:
            breaches.append(Breach("hold_mismatch", uscc, year,
                                   f"rdm_{rid} ({status}): postings reserve {d.get('reserved', 0)} and grant "
                                   f"{d.get('granted', 0)}, the redemption holds {held} and was granted {granted}"))
    for rid in sorted(set(sums) - seen):
        breaches.append(Breach("hold_without_redemption", detail=f"postings name rdm_{rid}, which does not exist"))
    return breaches


__all__ = [
    "Balance",
    "CapExceeded",
    "Combined",
    "programme_quotas",
    "Transfer",
    "apply_transfers",
    "post_many",
    "VerifyReport",
    "clawback",
    "grant",
    "lock_balances",
    "quota_of",
    "quotas",
    "read_quota",
    "stage",
    "transfer",
    "release",
    "reserve",
    "verify",
    "verify_holds",
]
