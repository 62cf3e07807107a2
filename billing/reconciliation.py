"""The monthly reconciliation (docs/API.md#rec-steps).

Reads with a handful of aggregate queries (metered sums, invoices held by several claims,
balances), then streams the claims in id order, a batch at a time with their items and
invoices, evaluates each with pure functions and adjusts reservations by the difference from
what the claim already holds — so a re-run changes nothing and never reserves twice. Each
batch is written back with a few executemany statements; memory does not grow with the
number of claims or usage records. Approved claims are recomputed at every run and clawed
back by the difference when voided usage no longer supports their grant (docs/API.md#clawbacks).

Two passes (docs/API.md#rec-steps, step 3): first the claims that hold quota give back what
their own figures no longer support (clawbacks, the part of a hold above what the claim keeps
whatever quota is left), then every open claim takes quota in id order. Quota given back by a
later claim thus reaches an earlier one cut by the cap in the same run, not at the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from billing import budget as budgets
from billing import ledger, redemptions, risk_data
from billing.claims import own_invoice_items
from billing.models import (
    Claim,
    ClaimAdjustment,
    ClaimItem,
    ProviderInvoice,
    QuotaBalance,
    Reconciliation,
)
from billing.policy import (
    DEFAULT_PROGRAMME,
    INVOICE_AMOUNT_MISMATCH,
    USAGE_INVOICE_MISMATCH,
    ClaimAmounts,
    Offer,
    Policy,
    approved_item_base,
    compute_claim,
    in_window,
    item_base,
    kept_hold,
    listing_bounds,
    period_dates,
    programme_covers,
    recomputed_grant,
    stack_offers,
    window_bounds,
)
from billing.risk import needs_review, review_discrepancy
from billing.totals import ClaimTotals, codes_of
from kernel import audit
from kernel.billing_periods import EXCLUSIVE, lock_period
from kernel.db import utcnow
from kernel.errors import Conflict
from kernel.periods import period_year
from kernel.vocabulary import (
    OPEN,
    RECONCILED,
    AdjustmentKind,
    AuditAction,
    ClaimStatus,
    Discrepancy,
    PeriodState,
    UsageStatus,
)
from metering.models import Enterprise, Provider, UsageRecord
from metering.registry import provider_listed

Fen = int
UNBOUNDED: Fen = 10**18


@dataclass(frozen=True)
class ItemFacts:
    """What the database says about one claimed invoice."""

    provider_id: str
    invoice_no: str
    amount_paid: Fen
    invoice_amount: Fen | None  # None: no such invoice for this enterprise and period
    metered: Fen  # the whole month's active usage, compared with the invoice
    first_claim_id: int | None  # the claim that holds this invoice, if another one does
    eligible_metered: Fen | None = None  # the part that ended inside the window and the listing
    unlisted: dict[str, Any] | None = None  # provider_not_listed, when the provider was not in P
    redeemed: dict[str, Any] | None = None  # invoice_already_redeemed (billing/redemptions.py)


@dataclass
class ItemOutcome:
    base: Fen
    discrepancies: list[dict[str, Any]] = field(default_factory=list)


def evaluate_item(policy: Policy, f: ItemFacts) -> ItemOutcome:
    """Item checks, steps 5–6 of docs/API.md#rec-steps for one item (pure).

    The arithmetic (tolerance, the base) is billing/policy.py's `item_base`; this adds the
    checks that need the database's facts (the invoice exists, no other claim holds it) and
    the discrepancies' figures. A provider not listed on any day of the period gives its item
    `provider_not_listed` (base 0) and leaves the claim's other items alone.
    """
    found: list[dict[str, Any]] = [f.unlisted] if f.unlisted else []
    if f.invoice_amount is None:
        return ItemOutcome(0, [*found, {"code": Discrepancy.INVOICE_NOT_FOUND,
                                        "message": f"No invoice {f.invoice_no} from {f.provider_id} to this enterprise for the period",
                                        "provider_id": f.provider_id, "invoice_no": f.invoice_no}])
    base, codes = item_base(policy, f.amount_paid, f.invoice_amount, f.metered, f.eligible_metered)
    if INVOICE_AMOUNT_MISMATCH in codes:
        found.append(_mismatch(policy, INVOICE_AMOUNT_MISMATCH, "amount_paid", f.amount_paid, f.invoice_amount,
                               f"Paid {f.amount_paid} fen"))
    if f.first_claim_id is not None:
        found.append({"code": Discrepancy.INVOICE_CLAIMED_TWICE,
                      "message": f"Invoice {f.invoice_no} is already claimed by clm_{f.first_claim_id}",
                      "invoice_no": f.invoice_no, "first_claim_id": f"clm_{f.first_claim_id}"})
    if USAGE_INVOICE_MISMATCH in codes:
        found.append(_mismatch(policy, USAGE_INVOICE_MISMATCH, "metered", f.metered, f.invoice_amount,
                               f"Metered usage is {f.metered} fen"))
    if f.redeemed:
        found.append(f.redeemed)
    return ItemOutcome(0 if found else base, found)


def _mismatch(policy: Policy, code: str, name: str, amount: Fen, invoiced: Fen, said: str) -> dict[str, Any]:
    return {"code": code, "message": f"{said} but the invoice says {invoiced} fen",
            name: amount, "invoice_amount": invoiced, "difference": amount - invoiced,
            "tolerance": policy.tolerance}


def claim_level(policy: Policy, period: str, enterprise: Enterprise | None, covered: bool = True
                ) -> list[dict[str, Any]]:
    """Claim-level checks (docs/API.md#rec-steps, step 4); any of them sets every item's base to 0 (pure).
    `covered`: the enterprise is in the programme's counties and enterprise list
    (docs/POLICY.md#programmes; `programme_covers`)."""
    found: list[dict[str, Any]] = []
    if not in_window(policy, period):
        found.append({"code": Discrepancy.OUTSIDE_POLICY_WINDOW,
                      "message": f"{period} is outside the policy window "
                                 f"{policy.effective_from} – {policy.effective_until}",
                      "period": period, "effective_from": policy.effective_from.isoformat(),
                      "effective_until": policy.effective_until.isoformat()})
    if enterprise is None or not enterprise.eligible:
        found.append({"code": Discrepancy.ENTERPRISE_NOT_ELIGIBLE,
                      "message": "The enterprise is not eligible for the programme"})
    elif not covered:
        found.append({"code": Discrepancy.ENTERPRISE_NOT_ELIGIBLE,
                      "message": f"The enterprise is outside programme {policy.id}'s counties or enterprise list",
                      "programme_id": policy.id})
    return found


def provider_not_listed(policy: Policy, period: str, providers: dict[str, Provider], pid: str
                        ) -> dict[str, Any] | None:
    """The item-level listing check (docs/API.md#rec-steps, step 5.0), pure: the discrepancy when
    provider `pid` is unregistered, in the catalogue on no day of the period, or of a kind the
    policy does not subsidise; None when listed (perhaps for part of the period only: then
    metered_sums counts only its usage that ended inside the listing)."""
    first, last = period_dates(period)
    p = providers.get(pid)
    if p is None or not provider_listed(p, first, last):
        return {"code": Discrepancy.PROVIDER_NOT_LISTED,
                "message": f"Provider {pid} was not in the catalogue during {period}",
                "provider_id": pid,
                "listed_from": p.listed_from.isoformat() if p and p.listed_from else None,
                "listed_until": p.listed_until.isoformat() if p and p.listed_until else None}
    if p.kind not in policy.resource_kinds:
        # Listed, but selling power this policy does not subsidise (智算/超算 only).
        return {"code": Discrepancy.PROVIDER_NOT_LISTED,
                "message": f"Provider {pid} sells {p.kind} power, which policy {policy.id} does not subsidise",
                "provider_id": pid, "kind": p.kind, "resource_kinds": list(policy.resource_kinds)}
    return None


def metered_sums(session: Session, policy: Policy, period: str,
                 providers: dict[str, Provider] | None = None) -> dict[tuple[str, str], tuple[Fen, Fen]]:
    """(whole month, eligible part) of active usage per (provider, enterprise): one query.

    The eligible part ended inside the policy window and inside the provider's listing
    (docs/API.md#rec-steps, step 1): providers whose listing narrows the window get their own
    bounds, grouped so the CASE has one branch per distinct range, not per provider.
    """
    window = window_bounds(policy)
    ranges: dict[tuple[datetime, datetime], list[str]] = {}
    for p in (providers or {}).values():
        bounds = listing_bounds(policy, p.listed_from, p.listed_until)
        if bounds != window:
            ranges.setdefault(bounds, []).append(p.id)

    def ended_inside(bounds: tuple[datetime, datetime]):
        return case((and_(UsageRecord.ended_at >= bounds[0], UsageRecord.ended_at < bounds[1]),
                     UsageRecord.amount), else_=0)

    in_window = ended_inside(window)
    if ranges:
        in_window = case(*[(UsageRecord.provider_id.in_(sorted(pids)), ended_inside(b))
                           for b, pids in sorted(ranges.items())], else_=in_window)
    if policy.eligible_resources:
        # Storage, network, … are metered but left out of the base, as the window does
        # (docs/API.md#risk, ineligible_resource).
        in_window = case((risk_data.eligible_clause(policy.eligible_resources), in_window), else_=0)
    rows = session.execute(
        select(UsageRecord.provider_id, UsageRecord.enterprise_uscc, func.sum(UsageRecord.amount),
               func.sum(in_window))
        .where(UsageRecord.period == period, UsageRecord.status == UsageStatus.ACTIVE)
        .group_by(UsageRecord.provider_id, UsageRecord.enterprise_uscc)
    )
    return {(p, e): (int(total), int(eligible)) for p, e, total, eligible in rows}


BATCH = 500  # claims per batch: memory stays flat however many claims or usage records a month has


@dataclass
class _Item:
    id: int
    provider_id: str
    invoice_no: str
    amount_paid: Fen
    invoice_amount: Fen | None
    metered: Fen | None
    base: Fen
    discrepancies: list[dict[str, Any]]
    invoiced: Fen | None  # the period's invoice (provider_id, invoice_no), if any
    invoiced_to: str | None  # ... and whom it was issued to


@dataclass
class _Claim:
    id: int
    enterprise_uscc: str
    period: str
    status: str
    other_subsidies: list[dict[str, Any]]
    base: Fen
    computed: Fen
    payable_before_cap: Fen
    payable: Fen
    clawed_back: Fen
    cap_reached: bool
    discrepancies: list[dict[str, Any]]
    policy_id: str | None
    submitted_at: datetime | None = None
    programmes: list[dict[str, Any]] | None = None  # the other programmes' figures (docs/POLICY.md#programmes)
    items: list[_Item] = field(default_factory=list)


_CLAIM_COLUMNS = (Claim.id, Claim.enterprise_uscc, Claim.period, Claim.status, Claim.other_subsidies,
                  Claim.base, Claim.computed, Claim.payable_before_cap, Claim.payable, Claim.clawed_back,
                  Claim.cap_reached, Claim.discrepancies, Claim.policy_id, Claim.submitted_at,
                  Claim.programmes)


def _claim_batches(session: Session, period: str, batch: int, *where: Any) -> Iterator[list[_Claim]]:
    """The period's claims in id order (those matching `where`, if given), `batch` at a time,
    each with its items and invoices.

    Keyset pages (id > last) rather than one open cursor, so the batch's own UPDATEs never
    interleave with a half-read result on any database.
    """
    last = 0
    while True:
        claims = [_Claim(*row) for row in session.execute(
            select(*_CLAIM_COLUMNS).where(Claim.period == period, Claim.id > last, *where)
            .order_by(Claim.id).limit(batch))]
        if not claims:
            return
        by_id = {c.id: c for c in claims}
        invoice_on = and_(ProviderInvoice.provider_id == ClaimItem.provider_id,
                          ProviderInvoice.invoice_no == ClaimItem.invoice_no,
                          ProviderInvoice.period == period)
        for claim_id, *item in session.execute(
            select(ClaimItem.claim_id, ClaimItem.id, ClaimItem.provider_id, ClaimItem.invoice_no,
                   ClaimItem.amount_paid, ClaimItem.invoice_amount, ClaimItem.metered, ClaimItem.base,
                   ClaimItem.discrepancies, ProviderInvoice.amount, ProviderInvoice.enterprise_uscc)
            .outerjoin(ProviderInvoice, invoice_on)
            .where(ClaimItem.claim_id.in_(list(by_id)))
            .order_by(ClaimItem.claim_id, ClaimItem.position)
        ):
            by_id[claim_id].items.append(_Item(*item))
        yield claims
        last = claims[-1].id


def invoice_holders(session: Session, period: str) -> dict[tuple[str, str], int]:
    """Who holds each invoice listed by more than one claim of the period: an approved claim
    first, else the earliest claim not rejected (an invoice in one claim only is its own).

    Only claims of the enterprise the invoice was issued to compete for it: another
    enterprise's claim naming it gets invoice_not_found and never holds it (docs/API.md#rec-steps).
    """
    rows = session.execute(
        own_invoice_items(
            select(ClaimItem.provider_id, ClaimItem.invoice_no,
                   func.min(case((Claim.status == ClaimStatus.APPROVED, Claim.id))), func.min(Claim.id)),
            period)
        .group_by(ClaimItem.provider_id, ClaimItem.invoice_no)
        .having(func.count(func.distinct(Claim.id)) > 1)
    )
    return {(p, n): approved if approved is not None else first for p, n, approved, first in rows}


def _facts_for(claim: _Claim, metered, holder, unlisted, redeemed=None) -> list[ItemFacts]:
    facts = []
    for item in claim.items:
        invoiced = item.invoiced if item.invoiced_to == claim.enterprise_uscc else None
        owner = holder.get((item.provider_id, item.invoice_no))
        total, eligible = metered.get((item.provider_id, claim.enterprise_uscc), (0, 0))
        facts.append(ItemFacts(item.provider_id, item.invoice_no, item.amount_paid, invoiced, total,
                               owner if owner is not None and owner != claim.id else None, eligible,
                               unlisted(item.provider_id),
                               redemptions.claim_redeemed(redeemed or {}, item.provider_id, item.invoice_no,
                                                          claim.submitted_at)))
    return facts


@dataclass
class _Programme:
    """Another programme in a run (docs/POLICY.md#programmes): its own eligible metered sums,
    listing checks and locked balances (of the enterprises it covers); `policy` is its file."""

    policy: Policy
    metered: dict[tuple[str, str], tuple[Fen, Fen]]
    unlisted: Callable[[str], dict[str, Any] | None]
    balances: dict[tuple[str, int], ledger.Balance]
    covers: set[str] = field(default_factory=set)  # the enterprises it covers now


def _other_programmes(session: Session, others: Sequence[Policy], period: str, usccs: list[str],
                      providers: dict[str, Provider]) -> list[_Programme]:
    """The other programmes' facts for a run, their balance rows locked one programme after
    another in `others`' order, after the default programme's (docs/ARCHITECTURE.md#lock-order):
    of the enterprises each covers, and of those whose claims hold something under it from an
    earlier run (a county changed since: the run releases it)."""
    year = period_year(period)
    counties = dict(session.execute(select(Enterprise.uscc, Enterprise.county)
                                    .where(Enterprise.uscc.in_(usccs))).tuples().all()) if usccs else {}
    holding: dict[str, set[str]] = {}
    for uscc, figures in session.execute(select(Claim.enterprise_uscc, Claim.programmes).where(
            Claim.period == period, Claim.programmes.is_not(None))):
        for f in figures or []:
            if int(f["payable"]) > 0:
                holding.setdefault(f["programme_id"], set()).add(uscc)
    out = []
    for other in others:
        if other.programme == DEFAULT_PROGRAMME:
            raise ValueError(f"programme {other.id} runs beside the default one: build it with Programmes")
        listing = {pid: provider_not_listed(other, period, providers, pid) for pid in providers}

        def unlisted(pid: str, other=other, listing=listing) -> dict[str, Any] | None:
            return listing[pid] if pid in listing else provider_not_listed(other, period, providers, pid)
        covered = {u for u in usccs if u in counties and programme_covers(other, counties[u], u)}
        keys = [(u, year) for u in covered | holding.get(other.id, set())]
        out.append(_Programme(other, metered_sums(session, other, period, providers), unlisted,
                              ledger.lock_balances(session, other, keys), covered))
    return out


def reconcile(session: Session, policy: Policy, period: str, *, batch: int = BATCH,
              others: Sequence[Policy] = ()) -> tuple[Reconciliation, bool]:
    """Run the reconciliation (docs/API.md#rec-steps) for one period inside the caller's transaction. Returns (run, first_time).

    Aggregate queries for what every claim needs (metered sums per provider and enterprise,
    invoices held by several claims); the claims themselves stream past in id order, `batch`
    at a time: evaluated in Python, then written back with one executemany per table and one
    for the quota rows (net change per enterprise) and ledger postings. Only clawbacks, which
    are rare, go through the ORM one claim at a time. Before that walk, `_give_back` streams the
    claims that hold quota (approved ones, open ones with a reservation) and releases or claws
    back what they no longer support, so the walk's cap sees all of it (docs/API.md#rec-steps,
    step 3) and a re-run with nothing changed moves nothing.

    Locks in the one order (docs/ARCHITECTURE.md#lock-order): the period's row first, exclusive
    — a second run of the period waits here for the first to commit, then re-runs (never a
    duplicate run row) — then the balance rows, then the claims. A closed period is refused
    (Conflict `period_closed`): its figures are final.

    `others`: the programmes run beside `policy`, the default one (docs/POLICY.md#programmes).
    Each open claim is then evaluated under every programme whose counties and enterprise list
    cover its enterprise, and billing/policy.py's `stack_offers` decides what each pays; the
    other programmes' figures are kept in the claim's `programmes`. Without them the run is
    the single-programme one, unchanged.
    """
    if lock_period(session, period, EXCLUSIVE).state == PeriodState.CLOSED:
        raise Conflict("period_closed", f"Period {period} is closed: its figures are final", "period")
    year = period_year(period)
    usccs = list(session.scalars(select(Claim.enterprise_uscc).where(Claim.period == period)
                                 .distinct().order_by(Claim.enterprise_uscc)))
    providers = {p.id: p for p in session.scalars(select(Provider))}
    metered = metered_sums(session, policy, period, providers)
    listing = {pid: provider_not_listed(policy, period, providers, pid) for pid in providers}

    def unlisted(pid: str) -> dict[str, Any] | None:
        return listing[pid] if pid in listing else provider_not_listed(policy, period, providers, pid)
    holder = invoice_holders(session, period)
    redeemed = redemptions.redeemed_invoices(session, period)  # docs/API.md#rec-steps: invoice_already_redeemed
    risks = risk_data.load(session, policy, period, providers)  # a few grouped queries (docs/API.md#risk)
    balances = ledger.lock_balances(session, policy, [(u, year) for u in usccs])
    extra = _other_programmes(session, others, period, usccs, providers) if others else None
    # The budget (docs/API.md#budget): first in, first out across the year's periods; the
    # thresholds crossed by this run are told by comparing with these figures at the end.
    budget = next(iter(balances.values())).budget if balances else None
    budgets.note_queue(session, budget, period)
    used_before = {k: b.reserved + b.granted for k, b in balances.items()}
    budget_before = {year: budget.used} if budget is not None else {}
    now = utcnow()
    # Give back first (docs/API.md#rec-steps, step 3): releases and clawbacks, then the walk.
    released = _give_back(session, policy, period, batch, balances, metered, holder, unlisted, redeemed,
                          now, extra)
    totals = _Summary()
    for claims in _claim_batches(session, period, batch):
        registered = _registered(session, claims)
        transfers: list[ledger.Transfer] = []
        claim_rows: list[dict[str, Any]] = []
        item_rows: list[dict[str, Any]] = []
        for claim in claims:
            balance = balances[(claim.enterprise_uscc, year)]
            if claim.status in OPEN:
                claim.payable -= released.get(claim.id, 0)  # what it still holds after the release
                enterprise = _enterprise(registered, claim.enterprise_uscc)
                _ok, rep, county = registered.get(claim.enterprise_uscc, (None, None, None))
                risk = risks.assess(claim.enterprise_uscc, [i.provider_id for i in claim.items], rep)
                was = claim.status
                covered = programme_covers(policy, county, claim.enterprise_uscc)
                stacked = None if extra is None else [
                    (p, _offer(p.policy, claim, p.balances[(claim.enterprise_uscc, year)],
                               _facts_for(claim, p.metered, holder, p.unlisted, redeemed),
                               claim_level(p.policy, period, enterprise)))
                    for p in extra if claim.enterprise_uscc in p.covers]
                _evaluate_open(policy, claim, balance, _facts_for(claim, metered, holder, unlisted, redeemed),
                               claim_level(policy, period, enterprise, covered),
                               now, transfers, claim_rows, item_rows, risk, stacked, extra)
                if claim.status == ClaimStatus.WAITLISTED and was != ClaimStatus.WAITLISTED:
                    audit.append(session, AuditAction.CLAIM_WAITLISTED, "claim", f"clm_{claim.id}",
                                 before={"status": was}, after={"status": claim.status,
                                                                "enterprise_uscc": claim.enterprise_uscc})
            totals.add(claim)  # an approved claim was recomputed by _give_back
        ledger.apply_transfers(session, transfers)
        if claim_rows:
            c = Claim.__table__
            session.execute(update(c).where(c.c.id == bindparam("b_id")), claim_rows)
        if item_rows:
            i = ClaimItem.__table__
            session.execute(update(i).where(i.c.id == bindparam("b_id")), item_rows)

    budgets.raise_crossings(session, policy, used_before, balances, budget_before,
                            {year: budget} if budget is not None else {})

    # Rows changed with Core statements: ORM copies the caller may hold would be stale.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, (Claim, ClaimItem, QuotaBalance)) and obj not in session.dirty:
            session.expire(obj)

    # Captured redemptions are checked like claim items (docs/API.md#rec-steps, redemptions).
    checked = redemptions.reconcile_period(session, policy, period, metered=metered, unlisted=unlisted,
                                           claim_level=lambda e: claim_level(policy, period, e), now=now,
                                           assess=risks.assess)

    run = session.get(Reconciliation, period)
    first_time = run is None
    if run is None:
        run = Reconciliation(period=period, status="completed", runs=0, policy_id=policy.id, first_run_at=now)
        session.add(run)
    run.runs += 1
    run.last_run_at = now
    run.policy_id = policy.id
    run.summary = {**totals.result(), "redemptions": checked}
    audit.append(session, AuditAction.RECONCILIATION_RUN, "reconciliation", f"rec_{period}",
                 after={"run": run.runs, "policy_id": policy.id, "summary": run.summary})
    return run, first_time


@dataclass(frozen=True)
class _Eligibility:
    eligible: bool


def _registered(session: Session, claims: list[_Claim]) -> dict[str, tuple[bool, str | None, str | None]]:
    """(eligible, legal representative, county) of the batch's enterprises, as registered."""
    return {u: (ok, rep, county) for u, ok, rep, county in session.execute(
        select(Enterprise.uscc, Enterprise.eligible, Enterprise.legal_representative, Enterprise.county).where(
            Enterprise.uscc.in_({c.enterprise_uscc for c in claims})))}


def _enterprise(registered: dict[str, tuple[bool, str | None, str | None]], uscc: str) -> _Eligibility | None:
    return _Eligibility(registered[uscc][0]) if uscc in registered else None


def _give_back(session: Session, policy: Policy, period: str, batch: int,
               balances: dict[tuple[str, int], ledger.Balance], metered: dict[tuple[str, str], tuple[Fen, Fen]],
               holder: dict[tuple[str, str], int], unlisted: Callable[[str], dict[str, Any] | None],
               redeemed: dict, now: datetime, extra: list[_Programme] | None) -> dict[int, Fen]:
    """The run's first pass (docs/API.md#rec-steps, step 3): before any claim of P takes quota,
    every claim gives back what its own figures no longer support — an open claim that holds
    something releases what it would not keep however little quota were left (`kept_hold`), an
    approved claim is recomputed and clawed back (docs/API.md#clawbacks). Neither amount depends
    on the quota left, so this changes no claim's figures; it only frees the quota before the
    walk, where an earlier claim cut by the cap can take it — in this run, not at the next one,
    so that a re-run with nothing changed moves nothing. Only the claims that hold something
    are read. Returns what each open claim released, by id, for the walk (its `held`): an entry
    per claim whose hold the run lowered, not per claim of the month."""
    year = period_year(period)
    released: dict[int, Fen] = {}
    holding = or_(and_(Claim.status.in_(RECONCILED), Claim.payable > 0), Claim.status == ClaimStatus.APPROVED)
    for claims in _claim_batches(session, period, batch, holding):
        registered = _registered(session, claims)
        transfers: list[ledger.Transfer] = []
        for claim in claims:
            balance = balances[(claim.enterprise_uscc, year)]
            if claim.status == ClaimStatus.APPROVED:
                _recompute_approved(session, policy, claim, balance, metered, now, extra)
                continue
            county = registered.get(claim.enterprise_uscc, (None, None, None))[2]
            codes = claim_level(policy, period, _enterprise(registered, claim.enterprise_uscc),
                                programme_covers(policy, county, claim.enterprise_uscc))
            _outcomes, bases = _bases(policy, _facts_for(claim, metered, holder, unlisted, redeemed), codes)
            kept = kept_hold(policy, bases, _declared(claim), claim.payable)
            if kept < claim.payable:
                _move(policy, claim, balance, kept, claim.payable, transfers)
                released[claim.id] = claim.payable - kept
        ledger.apply_transfers(session, transfers)
    return released


@dataclass
class _Offered:
    """One programme's evaluation of a claim on its own: the items' outcomes and bases, the
    figures (cap and budget included), the claim-level, cap and budget discrepancies, and what
    the claim already held under it."""

    amounts: ClaimAmounts
    outcomes: list[ItemOutcome]
    bases: list[Fen]
    discrepancies: list[dict[str, Any]]
    held: Fen


def _held(claim: _Claim, programme_id: str | None = None) -> Fen:
    """What an open claim holds from an earlier run: under the default programme (None), its
    `payable`; under another, that programme's figure in `programmes`."""
    if claim.status not in RECONCILED:
        return 0
    if programme_id is None:
        return claim.payable
    return next((int(p["payable"]) for p in claim.programmes or [] if p["programme_id"] == programme_id), 0)


def _bases(policy: Policy, facts: list[ItemFacts], claim_codes: list[dict[str, Any]]
           ) -> tuple[list[ItemOutcome], list[Fen]]:
    """The items' outcomes (steps 5–6) and their bases, all 0 after a claim-level finding (step 4)."""
    outcomes = [evaluate_item(policy, f) for f in facts]
    return outcomes, [0 if claim_codes else o.base for o in outcomes]


def _declared(claim: _Claim) -> list[Fen]:
    """The claim's declared other subsidies (就高不重复), in fen."""
    return [int(s["amount"]) for s in claim.other_subsidies or []]


def _offer(policy: Policy, claim: _Claim, balance: ledger.Balance, facts: list[ItemFacts],
           claim_codes: list[dict[str, Any]], held: Fen | None = None) -> _Offered:
    """What `policy`'s programme would pay the claim on its own (pure): item bases, then rate,
    rounding, the cap (its quota `balance`), declared other subsidies and its budget.
    `held`: None for another programme (read from the claim's `programmes`)."""
    held = _held(claim, policy.id) if held is None else held
    outcomes, bases = _bases(policy, facts, claim_codes)
    amounts = compute_claim(policy, bases, _declared(claim), balance.remaining + held, held=held)
    discrepancies = list(claim_codes)
    if amounts.cap_reached:
        discrepancies.append({"code": Discrepancy.CAP_REACHED,
                              "message": f"Cut to the remaining quota: {amounts.payable} of "
                                         f"{amounts.payable_before_cap} fen",
                              "payable_before_cap": amounts.payable_before_cap,
                              "remaining": balance.remaining + held, "cap": balance.cap,
                              "payable": amounts.payable})
    delta = amounts.payable - held
    funded = budgets.fundable(balance.budget, claim.id, delta)
    if balance.budget is not None and funded < delta:  # cut by the budget (docs/API.md#budget)
        wanted = amounts.payable
        amounts = replace(amounts, payable=held + funded)
        discrepancies.append(budgets.exhausted(balance.budget, wanted, amounts.payable,
                                               balance.budget.remaining))
    return _Offered(amounts, outcomes, bases, discrepancies, held)


def _move(policy: Policy, claim: _Claim, balance: ledger.Balance, payable: Fen, held: Fen,
          transfers: list[ledger.Transfer]) -> None:
    """Reserve or release the difference between what the claim now gets under `policy`'s
    programme and what it held there."""
    delta = payable - held
    why = dict(claim_id=claim.id, policy_id=policy.id)
    if delta > 0:
        ledger.stage(transfers, "reserve", balance, delta, reason=f"reconciliation {claim.period}", **why)
    elif delta < 0:
        ledger.stage(transfers, "release", balance, -delta,
                     reason=f"reconciliation {claim.period}: payable lowered", **why)


def _stack(policy: Policy, claim: _Claim, own: _Offered, stacked: list[tuple[_Programme, _Offered]],
           extra: list[_Programme], transfers: list[ledger.Transfer]) -> tuple[Fen, list[dict[str, Any]]]:
    """Combine the default programme's offer with the others' (billing/policy.py `stack_offers`,
    docs/POLICY.md#programmes); move the other programmes' balances. Returns what the default
    programme pays and the other programmes' figures for the claim's `programmes`."""
    def offer(p: Policy, o: _Offered) -> Offer:
        return Offer(p.id, p.stacking, p.effective_from, o.amounts.payable, o.amounts.base, p.stack_limit)

    paid = stack_offers([offer(policy, own), *(offer(p.policy, o) for p, o in stacked)])
    figures = []
    key = (claim.enterprise_uscc, period_year(claim.period))
    for p in extra:  # held under a programme that no longer covers the enterprise: released
        held = _held(claim, p.policy.id)
        if held and p not in [q for q, _o in stacked] and key in p.balances:
            _move(p.policy, claim, p.balances[key], 0, held, transfers)
    for p, o in stacked:
        pays = paid[p.policy.id]
        _move(p.policy, claim, p.balances[(claim.enterprise_uscc, period_year(claim.period))], pays, o.held,
              transfers)
        figures.append({"programme_id": p.policy.id, "base": o.amounts.base, "computed": o.amounts.computed,
                        "alone": o.amounts.payable, "payable": pays, "cap_reached": o.amounts.cap_reached,
                        "discrepancies": codes_of(o.discrepancies)})
    return paid[policy.id], figures


def _evaluate_open(policy: Policy, claim: _Claim, balance: ledger.Balance, facts: list[ItemFacts],
                   claim_codes: list[dict[str, Any]], now: datetime, transfers: list[ledger.Transfer],
                   claim_rows: list[dict[str, Any]], item_rows: list[dict[str, Any]],
                   risk: dict[str, Any] | None = None,
                   stacked: list[tuple[_Programme, _Offered]] | None = None,
                   extra: list[_Programme] | None = None) -> None:
    """Evaluate one open claim; move `balance` at once and queue the writes for the batch.

    `risk` ({score, signals}, billing/risk_data.py) is stored with the claim and never changes
    an amount; above the review threshold a clean claim is flagged `risk_review` (docs/API.md#risk).
    `stacked`: the other programmes that cover the enterprise, with their own offers, when
    several programmes run (docs/POLICY.md#programmes); None: the default programme alone."""
    own = _offer(policy, claim, balance, facts, claim_codes, _held(claim))
    amounts, outcomes, bases, discrepancies = own.amounts, own.outcomes, own.bases, own.discrepancies
    total = amounts.payable
    if stacked is not None:
        pays, claim.programmes = _stack(policy, claim, own, stacked, extra or [], transfers)
        amounts = replace(amounts, payable=pays)
        total = pays + sum(p["payable"] for p in claim.programmes)
    _move(policy, claim, balance, amounts.payable, own.held, transfers)
    for item, fact, outcome, base in zip(claim.items, facts, outcomes, bases, strict=True):
        item.invoice_amount, item.metered, item.base = fact.invoice_amount, fact.metered, base
        item.discrepancies = outcome.discrepancies
        item_rows.append({"b_id": item.id, "invoice_amount": item.invoice_amount, "metered": item.metered,
                          "base": base, "discrepancies": item.discrepancies})
    flagged = bool(claim_codes) or any(o.discrepancies for o in outcomes)
    if risk is not None and not flagged and needs_review(policy.risk, risk):
        flagged = True
        discrepancies.append(review_discrepancy(policy.risk, risk))
    claim.status = ClaimStatus.FLAGGED if flagged else ClaimStatus.VERIFIED
    if total == 0 and any(d["code"] == Discrepancy.BUDGET_EXHAUSTED for d in discrepancies):
        claim.status = ClaimStatus.WAITLISTED  # nothing funded yet: waits its turn (docs/API.md#budget)
    claim.base, claim.computed = amounts.base, amounts.computed
    claim.payable_before_cap, claim.payable = amounts.payable_before_cap, amounts.payable
    claim.cap_reached = amounts.cap_reached
    claim.discrepancies = discrepancies
    claim.policy_id = policy.id
    claim_rows.append({"b_id": claim.id, "status": claim.status, "base": claim.base,
                       "computed": claim.computed, "payable_before_cap": claim.payable_before_cap,
                       "payable": claim.payable, "cap_reached": claim.cap_reached,
                       "discrepancies": discrepancies, "policy_id": policy.id, "reconciled_at": now,
                       "risk": risk, **({} if stacked is None else {"programmes": claim.programmes})})


def _approved_bases(claim: _Claim, metered: dict[tuple[str, str], tuple[Fen, Fen]]) -> list[Fen]:
    """An approved claim's item bases now (`approved_item_base`), from one programme's metered sums."""
    bases = []
    for item in claim.items:
        invoiced = item.invoiced if item.invoiced_to == claim.enterprise_uscc else None
        _total, eligible = metered.get((item.provider_id, claim.enterprise_uscc), (0, 0))
        bases.append(approved_item_base(item.amount_paid, invoiced, eligible))
    return bases


def _recompute_approved(session: Session, policy: Policy, claim: _Claim, balance: ledger.Balance,
                        metered: dict[tuple[str, str], tuple[Fen, Fen]], now: datetime,
                        extra: list[_Programme] | None = None) -> None:
    """Recompute an approved claim (docs/API.md#clawbacks) and claw back the difference when
    the grant is now too high: items are not zeroed for discrepancies (a person approved them),
    so a partial void takes back its share only; a grant is never raised, so late usage never
    claws back; a re-run with nothing changed finds no difference and posts nothing. With other
    programmes (`extra`), each programme's grant is recomputed and they are stacked again
    (`_restack_approved`)."""
    bases = _approved_bases(claim, metered)
    others = [int(s["amount"]) for s in claim.other_subsidies or []]
    target = recomputed_grant(policy, bases, others, balance.remaining, claim.payable)
    if extra is not None:
        target = _restack_approved(session, policy, claim, target, sum(bases), extra)
    cut = claim.payable - target
    if cut <= 0:
        return
    granted_at_approval = claim.payable + claim.clawed_back
    reason = (f"usage voided after approval: bases now {sum(bases)} fen (were {claim.base}); "
              f"grant {claim.payable} → {target} fen")
    ledger.clawback(session, balance, cut, claim_id=claim.id, policy_id=claim.policy_id or policy.id,
                    reason=reason)
    session.add(ClaimAdjustment(claim_id=claim.id, period=claim.period, kind=AdjustmentKind.CLAWBACK, amount=-cut,
                                reason=reason, created_at=now))
    audit.append(session, AuditAction.CLAIM_CLAWED_BACK, "claim", f"clm_{claim.id}",
                 before={"granted": claim.payable, "clawed_back": claim.clawed_back},
                 after={"granted": target, "clawed_back": claim.clawed_back + cut, "reason": reason})
    found = {"code": Discrepancy.USAGE_VOIDED_AFTER_APPROVAL,
             "message": f"Usage voided after approval: the claim now supports {target} of the "
                        f"{granted_at_approval} fen granted; {claim.clawed_back + cut} fen clawed back",
             "base_at_approval": claim.base, "base": sum(bases), "granted_at_approval": granted_at_approval,
             "payable": target, "clawed_back": claim.clawed_back + cut}
    discrepancies = [d for d in claim.discrepancies or []
                     if d.get("code") != Discrepancy.USAGE_VOIDED_AFTER_APPROVAL] + [found]
    c = Claim.__table__
    session.execute(update(c).where(c.c.id == claim.id)
                    .values(payable=target, clawed_back=claim.clawed_back + cut, discrepancies=discrepancies))
    claim.payable = target
    claim.clawed_back += cut
    claim.discrepancies = discrepancies


def _restack_approved(session: Session, policy: Policy, claim: _Claim, target: Fen, spend: Fen,
                      extra: list[_Programme]) -> Fen:
    """An approved claim under several programmes (docs/POLICY.md#programmes): each programme's
    grant recomputed as the default programme's is (`recomputed_grant`: never above what it
    granted), the programmes stacked again (`stack_offers`), and what another programme granted
    beyond its new share clawed back on its quota (a `claim.clawed_back` audit entry; its figure
    keeps `clawed_back`). Returns the default programme's new grant (`target` at most)."""
    year = period_year(claim.period)
    granted = {f["programme_id"]: int(f["payable"]) for f in claim.programmes or []}
    declared = [int(s["amount"]) for s in claim.other_subsidies or []]
    offers = [Offer(policy.id, policy.stacking, policy.effective_from, target, spend, policy.stack_limit)]
    covering = [p for p in extra if p.policy.id in granted and (claim.enterprise_uscc, year) in p.balances]
    for p in covering:
        bases = _approved_bases(claim, p.metered)
        keep = recomputed_grant(p.policy, bases, declared, p.balances[(claim.enterprise_uscc, year)].remaining,
                                granted[p.policy.id])
        offers.append(Offer(p.policy.id, p.policy.stacking, p.policy.effective_from, keep, sum(bases),
                            p.policy.stack_limit))
    paid = stack_offers(offers)
    figures = []
    for f in claim.programmes or []:
        cut = int(f["payable"]) - paid.get(f["programme_id"], int(f["payable"]))
        if cut > 0:
            p = next(p for p in covering if p.policy.id == f["programme_id"])
            reason = f"programme {p.policy.id}: grant {f['payable']} → {f['payable'] - cut} fen after usage voided"
            ledger.clawback(session, p.balances[(claim.enterprise_uscc, year)], cut, claim_id=claim.id,
                            policy_id=p.policy.id, reason=reason)
            audit.append(session, AuditAction.CLAIM_CLAWED_BACK, "claim", f"clm_{claim.id}",
                         before={"programme_id": p.policy.id, "granted": f["payable"]},
                         after={"programme_id": p.policy.id, "granted": f["payable"] - cut, "reason": reason})
            f = {**f, "payable": f["payable"] - cut, "clawed_back": int(f.get("clawed_back", 0)) + cut}
        figures.append(f)
    if figures != (claim.programmes or []):
        c = Claim.__table__
        session.execute(update(c).where(c.c.id == claim.id).values(programmes=figures))
        claim.programmes = figures
    return paid[policy.id]


class _Summary(ClaimTotals):
    """The run's summary, added up claim by claim as the batches stream past (billing/totals.py)."""

    def add(self, c) -> None:
        """`c`: a Claim or a _Claim, with its items (the claim's base: items' bases are not added)."""
        self.add_claim(c.status, codes_of(c.discrepancies), c.computed, c.payable, c.clawed_back,
                       c.cap_reached, base=c.base)
        for item in c.items:
            self.add_item(codes_of(item.discrepancies), item.amount_paid, item.invoice_amount,
                          item.metered, None)

    def result(self) -> dict[str, Any]:
        return self.summary()


def summarise(session: Session, period: str, claims: Iterable[Claim]) -> dict[str, Any]:
    """The summary of `claims` (ORM objects with their items), shaped as a run's summary."""
    s = _Summary()
    for c in claims:
        s.add(c)
    return {**s.result(), "redemptions": redemptions.period_counts(session, period)}


def adjustments_of(session: Session, period: str) -> list[ClaimAdjustment]:
    return list(session.scalars(select(ClaimAdjustment).where(ClaimAdjustment.period == period)
                                .order_by(ClaimAdjustment.id)))
