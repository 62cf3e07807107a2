"""Policy simulation: a year's claims and redemptions replayed under another policy file,
read-only (docs/POLICY.md#simulation, docs/API.md#cli).

"What would last year have cost with a ¥3,000,000 cap or a 40 % rate?" The replay reads what
the reconciliation reads — the same queries (`metered_sums`, `invoice_holders`, the claim
batches with their items and invoices, `redeemed_invoices`) — and evaluates every claim with
the same pure functions (`evaluate_item`, `claim_level`, `provider_not_listed`,
`billing/policy.py`'s `compute_claim`, `approved_item_base`, `recomputed_grant`,
`redemption_hold`, `redemption_capture`, `cap_for`), so the arithmetic has one home. It
writes nothing: it runs in a read-only transaction where the database has one
(`read_only`), and keeps its balances in memory.

The order is the engine's as if each month had been reconciled once after its end: month by
month, each month's redemptions first (they hold quota when authorised, during the month),
then its claims in id order, each consuming the year's quota (and the budget) in turn.
Memory stays flat: one month's metered sums (per provider and enterprise) and one batch of
claims at a time, plus one row per enterprise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from billing import budget as budgets
from billing import redemptions
from billing.ledger import filing_dates
from billing.models import Claim
from billing.policy import (
    Policy,
    approved_item_base,
    cap_for,
    compute_claim,
    in_window,
    recomputed_grant,
    redemption_capture,
    redemption_hold,
    remaining,
)
from billing.reconciliation import (
    BATCH,
    _Claim,
    _claim_batches,
    _facts_for,
    claim_level,
    evaluate_item,
    invoice_holders,
    metered_sums,
    provider_not_listed,
)
from billing.redemption_models import Redemption
from kernel.vocabulary import (
    HOLDING,
    OPEN,
    ClaimStatus,
    RedemptionStatus,
    SettlementMode,
)
from metering.models import Enterprise, Provider

Fen = int

# What the service holds for a claim (reserved) or paid (granted): its `payable`.
COUNTED = (ClaimStatus.VERIFIED, ClaimStatus.FLAGGED, ClaimStatus.WAITLISTED, ClaimStatus.APPROVED)
# Redemptions on the quota: holds (authorised, captured, flagged) and settled ones (granted).
REDEMPTIONS = (*HOLDING, RedemptionStatus.SETTLED)
CAPTURED = (RedemptionStatus.CAPTURED, RedemptionStatus.FLAGGED, RedemptionStatus.SETTLED)


@dataclass
class EnterpriseFigures:
    """One enterprise's year: what the service holds or paid, and what the simulated policy would."""

    uscc: str
    name: str = ""
    county: str | None = None
    actual_cap: Fen = 0
    simulated_cap: Fen = 0
    claims: int = 0
    redemptions: int = 0
    actual: Fen = 0
    simulated: Fen = 0
    actual_cap_hits: int = 0  # claims the annual cap cut (cap_reached)
    simulated_cap_hits: int = 0

    @property
    def difference(self) -> Fen:
        return self.simulated - self.actual

    @property
    def simulated_remaining(self) -> Fen:
        return remaining(self.simulated_cap, self.simulated, 0)


@dataclass
class Simulation:
    """The result: per enterprise, per month, totals and the budget impact (all fen)."""

    year: int
    policy: Policy  # the simulated one
    actual_policy: Policy
    enterprises: dict[str, EnterpriseFigures] = field(default_factory=dict)
    months: dict[str, list[Fen]] = field(default_factory=dict)  # period → [actual, simulated]
    unfunded: Fen = 0  # what the simulated [budget] could not fund (cut or waitlisted)
    claims: int = 0
    redemptions: int = 0

    def enterprise(self, uscc: str) -> EnterpriseFigures:
        e = self.enterprises.get(uscc)
        if e is None:
            e = self.enterprises[uscc] = EnterpriseFigures(uscc)
        return e

    def _total(self, figure: str) -> int:
        return sum(getattr(e, figure) for e in self.enterprises.values())

    actual = property(lambda self: self._total("actual"), doc="Fen granted or held, all enterprises")
    simulated = property(lambda self: self._total("simulated"), doc="Fen under the simulated policy")
    actual_cap_hits = property(lambda self: self._total("actual_cap_hits"))
    simulated_cap_hits = property(lambda self: self._total("simulated_cap_hits"))

    @property
    def difference(self) -> Fen:
        return self.simulated - self.actual

    @property
    def budget_annual(self) -> Fen | None:
        return self.policy.budget_annual

    @property
    def budget_left(self) -> Fen | None:
        """The simulated policy's annual budget minus the simulated total (negative: over)."""
        return None if self.budget_annual is None else self.budget_annual - self.simulated

    def rows(self) -> list[EnterpriseFigures]:
        """Enterprises by the size of the change (largest cut or rise first), then USCC."""
        return sorted(self.enterprises.values(), key=lambda e: (-abs(e.difference), e.uscc))


@contextmanager
def read_only(session: Session) -> Iterator[Session]:
    """Run the caller's reads in one read-only transaction and roll it back: PostgreSQL refuses
    any write in it (READ ONLY, REPEATABLE READ: one consistent snapshot of the year); SQLite is
    told `query_only` for as long as it lasts (its transactions begin IMMEDIATE, kernel/db.py, so
    writers wait for the replay there)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    try:
        if sqlite:
            session.execute(text("PRAGMA query_only = ON"))
        else:
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        yield session
    finally:
        if sqlite:  # inside the transaction: the connection goes back to the pool writable
            session.execute(text("PRAGMA query_only = OFF"))
        session.rollback()


class _Budget:
    """The simulated policy's budget, first in, first out (billing/budget.py `fundable`,
    `holdable`), moved in memory."""

    def __init__(self, policy: Policy, year: int) -> None:
        self.row = (budgets.Budget(policy.id, year, policy.budget_annual, 0, 0)
                    if policy.budget_annual is not None else None)
        self.waiting: tuple[int, str] | None = None  # the first claim the budget cut: (id, period)

    def start(self, period: str) -> None:
        # As the engine's note_queue: only claims of another period queue this period's claims.
        if self.row is not None:
            self.row.queue_head = self.waiting[0] if self.waiting and self.waiting[1] != period else None

    def claim(self, claim_id: int, period: str, wanted: Fen) -> Fen:
        funded = budgets.fundable(self.row, claim_id, wanted)
        if self.row is not None:
            self.row.reserved += funded
            if funded < wanted and self.waiting is None:
                self.waiting = (claim_id, period)
        return funded

    def release(self, amount: Fen) -> None:
        if self.row is not None:
            self.row.reserved -= amount

    def hold(self, wanted: Fen) -> Fen:
        if self.row is None:
            return wanted
        funded = 0 if self.waiting else min(wanted, self.row.remaining)
        self.row.reserved += funded
        return funded


def simulate(session: Session, actual_policy: Policy, policy: Policy, year: int, *, batch: int = BATCH,
             progress: Callable[[int], None] | None = None) -> Simulation:
    """Replay `year` under `policy` (read-only; see the module's docstring). `progress(n)` is
    told of every n claims and redemptions done (`count` says how many there are)."""
    sim = Simulation(year, policy, actual_policy)
    providers = {p.id: p for p in session.scalars(select(Provider))}
    registry = {e.uscc: e for e in session.execute(
        select(Enterprise.uscc, Enterprise.name, Enterprise.county, Enterprise.eligible))}
    filings: dict[str, list] = {}
    used: dict[str, Fen] = {}  # simulated reserved + granted per enterprise
    budget = _Budget(policy, year)

    def figures(uscc: str) -> EnterpriseFigures:
        e = sim.enterprises.get(uscc)
        if e is None:
            e = sim.enterprise(uscc)
            row = registry.get(uscc)
            e.name, e.county = (row.name, row.county) if row else ("", None)
            dates = filings.get(uscc, [])
            e.actual_cap = cap_for(actual_policy, year, dates)[0]
            e.simulated_cap = cap_for(policy, year, dates)[0]
        return e

    # One query for the filings of every enterprise the year's claims and redemptions name.
    ids = select(Claim.enterprise_uscc).where(Claim.period.like(f"{year}-%")).union(
        select(Redemption.enterprise_uscc).where(Redemption.year == year))
    filings.update(filing_dates(session, session.scalars(ids)))

    for month in range(1, 13):
        period = f"{year}-{month:02d}"
        sim.months[period] = [0, 0]
        budget.start(period)
        done = _redemptions(session, sim, policy, period, figures, used, budget, registry)
        if progress and done:
            progress(done)
        if not session.execute(select(Claim.id).where(Claim.period == period).limit(1)).first():
            continue
        metered = metered_sums(session, policy, period, providers)
        listing: dict[str, Any] = {}

        def unlisted(pid: str, period=period, listing=listing) -> dict[str, Any] | None:
            if pid not in listing:
                listing[pid] = provider_not_listed(policy, period, providers, pid)
            return listing[pid]
        holder = invoice_holders(session, period)
        redeemed = redemptions.redeemed_invoices(session, period)
        for claims in _claim_batches(session, period, batch):
            for claim in claims:
                e = figures(claim.enterprise_uscc)
                actual = claim.payable if claim.status in COUNTED else 0
                wanted, cap_hit = _replay_claim(policy, claim, e, used, metered, holder, unlisted, redeemed,
                                                registry.get(claim.enterprise_uscc))
                funded = budget.claim(claim.id, period, wanted)
                sim.unfunded += wanted - funded
                used[claim.enterprise_uscc] = used.get(claim.enterprise_uscc, 0) + funded
                e.claims += 1
                e.actual += actual
                e.simulated += funded
                e.actual_cap_hits += bool(claim.cap_reached and claim.status in COUNTED)
                e.simulated_cap_hits += cap_hit
                sim.months[period][0] += actual
                sim.months[period][1] += funded
                sim.claims += 1
            if progress:
                progress(len(claims))
    return sim


def count(session: Session, year: int) -> int:
    """How many claims and redemptions `simulate` replays for `year` (for a progress bar)."""
    claims = session.scalar(select(func.count()).select_from(Claim).where(Claim.period.like(f"{year}-%")))
    held = session.scalar(select(func.count()).select_from(Redemption).where(
        Redemption.year == year, Redemption.status.in_(REDEMPTIONS)))
    return int(claims or 0) + int(held or 0)


def _replay_claim(policy: Policy, claim: _Claim, e: EnterpriseFigures, used: dict[str, Fen], metered, holder,
                  unlisted, redeemed, enterprise) -> tuple[Fen, bool]:
    """(what the simulated policy pays the claim before the budget, whether its cap cut it).

    Open claims are evaluated as a run does (billing/reconciliation.py `_evaluate_open`,
    without what they held: the replay starts from an empty quota). Approved claims keep the
    items a person approved: the grant is replayed from the item bases stored when they were
    last evaluated, then recomputed with the usage metered now (docs/API.md#clawbacks) — a
    void after approval claws back, late usage does not. Rejected claims pay nothing."""
    if claim.status == ClaimStatus.REJECTED or SettlementMode.REIMBURSEMENT not in policy.settlement_modes:
        return 0, False
    available = remaining(e.simulated_cap, used.get(claim.enterprise_uscc, 0), 0)
    others = [int(s["amount"]) for s in claim.other_subsidies or []]
    if claim.status in OPEN:
        facts = _facts_for(claim, metered, holder, unlisted, redeemed)
        outcomes = [evaluate_item(policy, f) for f in facts]
        codes = claim_level(policy, claim.period, enterprise)
        amounts = compute_claim(policy, [0 if codes else o.base for o in outcomes], others, available)
        return amounts.payable, amounts.cap_reached
    # Approved: the grant, then the recomputation with the usage metered now.
    at_approval = compute_claim(policy, [i.base for i in claim.items], others, available)
    bases = []
    for item in claim.items:
        invoiced = item.invoiced if item.invoiced_to == claim.enterprise_uscc else None
        bases.append(approved_item_base(item.amount_paid, invoiced,
                                        metered.get((item.provider_id, claim.enterprise_uscc), (0, 0))[1]))
    granted = at_approval.payable
    return (recomputed_grant(policy, bases, others, available - granted, granted) if granted else 0,
            at_approval.cap_reached)


def _redemptions(session: Session, sim: Simulation, policy: Policy, period: str, figures, used: dict[str, Fen],
                 budget: _Budget, registry) -> int:
    """The period's redemptions on the quota, in id order (billing/redemptions.py `authorize`,
    `capture`): the hold is the rate on the list amount, cut to what remains (and to the
    budget); a captured one keeps the rate on the captured amount, never above the hold."""
    done = 0
    enabled = SettlementMode.REDEMPTION in policy.settlement_modes and in_window(policy, period)
    for uscc, status, list_amount, amount, subsidy in session.execute(
        select(Redemption.enterprise_uscc, Redemption.status, Redemption.list_amount, Redemption.amount,
               Redemption.subsidy)
        .where(Redemption.period == period, Redemption.status.in_(REDEMPTIONS)).order_by(Redemption.id)
    ):
        e = figures(uscc)
        row = registry.get(uscc)
        held = 0
        if enabled and row is not None and row.eligible:
            held = redemption_hold(policy, list_amount, remaining(e.simulated_cap, used.get(uscc, 0), 0))
            held = budget.hold(held) if held > 0 else 0
            if status in CAPTURED and amount is not None:
                captured = redemption_capture(policy, amount, held)
                budget.release(held - captured)  # the rest of the hold goes back
                held = captured
        used[uscc] = used.get(uscc, 0) + held
        e.redemptions += 1
        e.actual += subsidy
        e.simulated += held
        sim.months[period][0] += subsidy
        sim.months[period][1] += held
        sim.redemptions += 1
        done += 1
    return done
