"""Redemption at the provider (核销): authorise, capture, void, expire, reconcile, decide
(docs/API.md#redemptions).

A redemption holds the enterprise's subsidy on its quota at once — a two-phase transfer in the
ledger (billing/ledger.py `hold`): captured (the rest released, `hold_void`), voided or expired
(released), rejected by finance (released), or posted to granted when its quarterly settlement is
approved (billing/settlements.py, `hold_post`). The arithmetic is billing/policy.py's
(`redemption_hold`, `redemption_capture`, `item_base`); locks follow the one order
(docs/ARCHITECTURE.md#lock-order): the period's row (shared), the balance row, the redemption.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from billing import budget as budgets
from billing import ledger
from billing.claims import own_invoice_items
from billing.models import Claim, ClaimItem, ProviderInvoice
from billing.policy import (
    INVOICE_AMOUNT_MISMATCH,
    USAGE_INVOICE_MISMATCH,
    Policy,
    in_window,
    item_base,
    redemption_capture,
    redemption_hold,
    refuse_unless_mode,
    round_half_up_fen,
    thresholds_crossed,
)
from billing.redemption_models import Redemption
from billing.risk import needs_review, review_discrepancy
from kernel import audit
from kernel.billing_periods import refuse_if_closed
from kernel.db import parse_row_id, utcnow
from kernel.errors import Conflict, Invalid
from kernel.periods import parse_period, period_year
from kernel.vocabulary import (
    EVENT_OF_ACTION,
    HOLDING,
    AuditAction,
    ClaimStatus,
    Discrepancy,
    PeriodState,
    RedemptionStatus,
    SettlementMode,
)
from metering.models import Enterprise

Fen = int
# A redemption whose invoice a claim or another redemption may not take (docs/API.md#rec-steps).
REDEEMED = (RedemptionStatus.CAPTURED, RedemptionStatus.FLAGGED, RedemptionStatus.SETTLED)


def parse_redemption_id(value: str) -> int:
    return parse_row_id("rdm_", value, "redemption")


def view(r: Redemption | Authorised) -> dict[str, Any]:
    """What the audit entry (and so the event's fallback object) records of a redemption."""
    return {"object": "redemption", "id": f"rdm_{r.id}", "provider_id": r.provider_id,
            "enterprise_uscc": r.enterprise_uscc, "reference": r.reference, "period": r.period,
            "status": r.status, "list_amount": r.list_amount, "subsidy": r.subsidy, "held": r.held,
            "invoice_no": r.invoice_no, "amount": r.amount}


def _same_request(r: Redemption, uscc: str, list_amount: Fen, period: str) -> bool:
    return (r.enterprise_uscc, r.list_amount, r.period) == (uscc, list_amount, period)


def find(session: Session, provider_id: str, reference: str) -> Redemption | None:
    return session.scalars(select(Redemption).where(Redemption.provider_id == provider_id,
                                                    Redemption.reference == reference)).first()


def authorize(session: Session, policy: Policy, provider_id: str, enterprise_uscc: str, reference: str,
              list_amount: Fen, period: str, *, now: datetime | None = None) -> tuple[Redemption, bool]:
    """Hold the subsidy of `list_amount` on the enterprise's quota of `period`'s year at once
    (docs/API.md#redemption-authorize). Returns (redemption, created).

    Idempotent by (provider, reference): the same request again answers the stored redemption
    (whatever its status since); another request under the same reference is a Conflict. The
    hold is `redemption_hold`: the rate on the list amount, cut to what remains (a partial
    hold); nothing remaining is Invalid `quota_exhausted`. The programme's budget cuts it the
    same way, after any claim waiting for budget (`budget_exhausted`; billing/budget.py
    `holdable`), and the hold raises the threshold events it crosses. The balance row's lock and its
    conditional UPDATE (ledger.transfer) make over-reserving impossible at any concurrency.
    """
    refuse_unless_mode(policy, SettlementMode.REDEMPTION)
    parse_period(period)
    existing = find(session, provider_id, reference)
    if existing is not None:
        return _replay(existing, enterprise_uscc, list_amount, period), False
    enterprise = session.get(Enterprise, enterprise_uscc)
    if enterprise is None:
        raise Invalid("unknown_enterprise", f"Enterprise {enterprise_uscc} is not registered", "enterprise_uscc")
    if not enterprise.eligible:
        raise Invalid("enterprise_not_eligible", "The enterprise is not eligible for the programme",
                      "enterprise_uscc")
    if not in_window(policy, period):
        raise Invalid("outside_policy_window", f"{period} is outside the policy window "
                      f"{policy.effective_from} – {policy.effective_until}", "period")
    refuse_if_closed(session, period)  # the period's shared lock: first in the lock order
    year = period_year(period)
    balance = ledger.lock_balances(session, policy, [(enterprise_uscc, year)])[(enterprise_uscc, year)]
    # A request with the same reference that held this balance row's lock before us has committed
    # by now: answer it as a replay (a same reference for another enterprise meets the unique key).
    existing = find(session, provider_id, reference)
    if existing is not None:
        return _replay(existing, enterprise_uscc, list_amount, period), False
    subsidy = redemption_hold(policy, list_amount, balance.remaining)
    if subsidy <= 0:
        raise Invalid("quota_exhausted", f"Nothing remains of {enterprise_uscc}'s {year} quota "
                      f"(cap {balance.cap} fen)", "enterprise_uscc")
    funded = budgets.holdable(session, balance.budget)
    if funded is not None and funded <= 0:
        raise Invalid("budget_exhausted", f"Nothing remains of the programme's {year} budget for new "
                      f"holds (annual {balance.budget.annual} fen, claims waiting first)", "period")
    if funded is not None:
        subsidy = min(subsidy, funded)
    used_before = {(enterprise_uscc, year): balance.reserved + balance.granted}
    budget_before = {year: balance.budget.used} if balance.budget is not None else {}
    r = Redemption(**_new(policy, provider_id, enterprise_uscc, reference, list_amount, period, subsidy,
                          now or utcnow()))
    session.add(r)
    session.flush()
    ledger.transfer(session, "hold", balance, subsidy, claim_id=None, policy_id=policy.id,
                    reason=_hold_reason(reference), redemption_id=r.id)
    budgets.raise_crossings(session, policy, used_before, {(enterprise_uscc, year): balance}, budget_before,
                            {year: balance.budget} if balance.budget is not None else {})
    audit.append(session, AuditAction.REDEMPTION_AUTHORIZED, "redemption", f"rdm_{r.id}", after=view(r))
    return r, True


def _new(policy: Policy, provider_id: str, uscc: str, reference: str, list_amount: Fen, period: str,
         subsidy: Fen, now: datetime, rid: int | None = None) -> dict[str, Any]:
    """The fields of the authorised redemption holding `subsidy` (authorize's Redemption and
    plan_hold's Authorised)."""
    return dict(id=rid, provider_id=provider_id, reference=reference, enterprise_uscc=uscc,
                period=period, year=period_year(period), status=RedemptionStatus.AUTHORIZED,
                list_amount=list_amount, requested=round_half_up_fen(list_amount * policy.rate),
                subsidy=subsidy, held=subsidy, discrepancies=[], policy_id=policy.id, created_at=now,
                expires_at=now + timedelta(days=policy.hold_days))


@dataclass(frozen=True)
class Authorised:
    """A redemption just authorised, before its row exists: _new's fields and the columns a new
    row leaves empty. What plan_hold plans (an ORM object costs more to build than the whole
    fast write's Python; docs/BENCHMARKS.md#redemptions)."""

    id: int
    provider_id: str
    reference: str
    enterprise_uscc: str
    period: str
    year: int
    status: str
    list_amount: Fen
    requested: Fen
    subsidy: Fen
    held: Fen
    discrepancies: list
    policy_id: str
    created_at: datetime
    expires_at: datetime
    invoice_no: str | None = None
    amount: Fen | None = None
    risk: dict | None = None
    decision_reason: str | None = None
    settlement_id: int | None = None
    captured_at: datetime | None = None
    reconciled_at: datetime | None = None
    decided_at: datetime | None = None
    released_at: datetime | None = None
    settled_at: datetime | None = None


def _hold_reason(reference: str) -> str:
    return f"redemption {reference} authorised"


# --- the plain authorisation in one round trip (docs/ARCHITECTURE.md#hold-fast-path) -------------

@dataclass(frozen=True)
class HoldFigures:
    """What one read brings for an authorisation (api/hotread.py `hold_with_key`)."""

    registered: bool  # the enterprise exists
    eligible: bool
    period_state: str | None  # the period's row (None: never touched yet)
    taken: bool  # the provider has used the reference already
    row_cap: Fen | None  # the balance row's cap (None: no row for the year yet)
    cap: Fen  # the cap the filings give (billing.policy.cap_for, computed in SQL)
    cap_basis: str  # and its basis
    reserved: Fen
    granted: Fen


@dataclass(frozen=True)
class HoldPlan:
    """An authorisation decided from a read: the redemption to insert and the balance figures
    it was decided from (the write refuses if they moved)."""

    redemption: Authorised
    reserved: Fen
    granted: Fen
    row_cap: Fen | None  # the balance row's cap when read (None: no row yet: the write creates it)
    cap: Fen  # the cap after the raise, if any
    cap_basis: str
    raise_: tuple[str, Fen, str] | None  # ledger.cap_raise's transfer, as lock_balances makes it


def plan_hold(policy: Policy, provider_id: str, uscc: str, reference: str, list_amount: Fen, period: str,
              figures: HoldFigures, rid: int, now: datetime) -> HoldPlan | None:
    """The authorisation authorize() would make, when the request is the plain case: a new
    reference, an eligible enterprise, an open (or new) period in the window, something left to
    hold, no budget and no threshold crossed. A missing balance row is opened and a cap the
    filings raise is raised, as ledger.lock_balances does.
    None for anything else: authorize() then decides (and raises what it raises), under locks.
    The same rules, called the same way: refuse_unless_mode's mode, in_window, redemption_hold,
    thresholds_crossed, the same new redemption (_new)."""
    if SettlementMode.REDEMPTION not in policy.settlement_modes or policy.budget_annual is not None:
        return None
    try:
        parse_period(period)
    except ValueError:
        return None
    year = period_year(period)
    if (not figures.registered or not figures.eligible or figures.taken
            or figures.period_state not in (None, PeriodState.OPEN) or not in_window(policy, period)):
        return None
    raise_ = ledger.cap_raise(figures.row_cap or 0, figures.cap, figures.cap_basis)
    cap = max(figures.row_cap or 0, figures.cap)
    balance = ledger.Balance(uscc, year, cap, figures.cap_basis, figures.reserved, figures.granted, policy.id)
    subsidy = redemption_hold(policy, list_amount, balance.remaining)
    used = figures.reserved + figures.granted
    if subsidy <= 0 or thresholds_crossed(policy.quota_thresholds, cap, used, used + subsidy):
        return None
    return HoldPlan(Authorised(**_new(policy, provider_id, uscc, reference, list_amount, period, subsidy, now, rid)),
                    figures.reserved, figures.granted, figures.row_cap, cap, figures.cap_basis, raise_)


def hold_arguments(policy: Policy, plan: HoldPlan, actor: audit.Actor, event_object: str,
                   endpoint_ids: list[int], give_up: datetime) -> dict[str, Any]:
    """The arguments of the database's voucher_hold() (migration 0019) for `plan`: the rows
    authorize() writes — redemption, the hold's postings, the audit entry (its canonical JSON
    around prev_hash and seq: kernel.audit.chain_blob), its event (`event_object`: the API's
    object as JSON text, as the answer carries it) and deliveries."""
    r = plan.redemption
    entry = audit.entry_fields(actor, AuditAction.REDEMPTION_AUTHORIZED, "redemption", f"rdm_{r.id}",
                               after=view(r), at=r.created_at)
    head, tail = audit.chain_blob(entry)
    return {
        "p_id": r.id, "p_provider": r.provider_id, "p_reference": r.reference, "p_uscc": r.enterprise_uscc,
        "p_period": r.period, "p_year": r.year, "p_programme": policy.programme, "p_list": r.list_amount,
        "p_requested": r.requested, "p_subsidy": r.subsidy, "p_policy": r.policy_id,
        "p_created": r.created_at, "p_expires": r.expires_at,
        "p_reserved": plan.reserved, "p_granted": plan.granted, "p_row_cap": plan.row_cap, "p_cap": plan.cap,
        "p_basis": plan.cap_basis, "p_open_kind": plan.raise_[0] if plan.raise_ else None,
        "p_open_amount": plan.raise_[1] if plan.raise_ else 0, "p_open_reason": plan.raise_[2] if plan.raise_ else "",
        "p_open_entry": ledger.new_entry_id(),
        "p_entry": ledger.new_entry_id(), "p_reason": _hold_reason(r.reference),
        "p_actor_key": entry["actor_key_id"], "p_actor_role": entry["actor_role"],
        "p_request_id": entry["request_id"], "p_action": entry["action"], "p_object_id": entry["object_id"],
        "p_after": json.dumps(entry["after"], ensure_ascii=False), "p_blob_head": head, "p_blob_tail": tail,
        "p_event_type": EVENT_OF_ACTION[AuditAction.REDEMPTION_AUTHORIZED],
        "p_event_data": '{"object":' + event_object + "}",
        "p_endpoints": endpoint_ids, "p_give_up": give_up,
    }


def _replay(r: Redemption, uscc: str, list_amount: Fen, period: str) -> Redemption:
    if not _same_request(r, uscc, list_amount, period):
        raise Conflict("reference_conflict", f"Reference {r.reference!r} was used for another redemption "
                       f"(rdm_{r.id})", "reference")
    return r


def get(session: Session, rid: int) -> Redemption | None:
    return session.get(Redemption, rid)


def lock_redemption(session: Session, policy: Policy, rid: int) -> Redemption | None:
    """The redemption, locked in the one lock order (docs/ARCHITECTURE.md#lock-order): its
    period's row (shared), its balance row, then the redemption itself, re-read."""
    return ledger.lock_in_order(session, policy, Redemption, rid)


def _balance(session: Session, policy: Policy, r: Redemption) -> ledger.Balance:
    key = (r.enterprise_uscc, r.year)
    return ledger.lock_balances(session, policy, [key])[key]  # already locked: re-read in order


def _release(session: Session, policy: Policy, r: Redemption, amount: Fen, reason: str) -> None:
    ledger.transfer(session, "hold_void", _balance(session, policy, r), amount, claim_id=None,
                    policy_id=r.policy_id, reason=reason, redemption_id=r.id)
    r.held -= amount


def capture(session: Session, policy: Policy, r: Redemption, invoice_no: str, amount: Fen,
            *, now: datetime | None = None) -> Redemption:
    """Capture a locked authorised redemption with the full-amount invoice
    (docs/API.md#redemption-capture): the subsidy is recomputed on `amount`, never above the
    hold, and the rest of the hold is released. The same capture again answers it unchanged."""
    if r.status != RedemptionStatus.AUTHORIZED:
        if r.status in REDEEMED and (r.invoice_no, r.amount) == (invoice_no, amount):
            return r  # idempotent replay
        raise Conflict("redemption_not_authorized", f"A {r.status} redemption cannot be captured", "status")
    refuse_if_closed(session, r.period)  # a closed month's figures are final (docs/API.md#period-close)
    now = now or utcnow()
    if now >= r.expires_at:
        raise Conflict("redemption_expired", f"The hold expired at {r.expires_at.isoformat()}", "status")
    if amount > r.list_amount:
        raise Invalid("amount_above_list", f"Captured {amount} fen is above the authorised list amount "
                      f"{r.list_amount} fen", "amount")
    other = session.scalar(select(Redemption.id).where(
        Redemption.provider_id == r.provider_id, Redemption.invoice_no == invoice_no,
        Redemption.id != r.id, Redemption.status.in_(REDEEMED)))
    if other is not None:
        raise Conflict("invoice_already_redeemed", f"Invoice {invoice_no} is already redeemed by rdm_{other}",
                       "invoice_no")
    before = view(r)
    subsidy = redemption_capture(policy, amount, r.held)
    if r.held > subsidy:
        _release(session, policy, r, r.held - subsidy, f"redemption {r.reference} captured: rest released")
    r.status, r.subsidy, r.invoice_no, r.amount, r.captured_at = (
        RedemptionStatus.CAPTURED, subsidy, invoice_no, amount, now)
    audit.append(session, AuditAction.REDEMPTION_CAPTURED, "redemption", f"rdm_{r.id}", before=before,
                 after=view(r))
    return r


def void(session: Session, policy: Policy, r: Redemption, *, expired: bool = False,
         now: datetime | None = None) -> Redemption:
    """Void (or, from the expiry job, expire) a locked authorised redemption: its hold is released."""
    target = RedemptionStatus.EXPIRED if expired else RedemptionStatus.VOIDED
    if r.status == target:
        return r
    if r.status != RedemptionStatus.AUTHORIZED:
        raise Conflict("redemption_not_authorized", f"A {r.status} redemption cannot be "
                       f"{'expired' if expired else 'voided'}", "status")
    before = view(r)
    _release(session, policy, r, r.held, f"redemption {r.reference} {target}")
    r.status, r.released_at = target, now or utcnow()
    action = AuditAction.REDEMPTION_EXPIRED if expired else AuditAction.REDEMPTION_VOIDED
    audit.append(session, action, "redemption", f"rdm_{r.id}", before=before, after=view(r))
    return r


def due_for_expiry(session: Session, now: datetime, limit: int = 1000) -> list[int]:
    return list(session.scalars(select(Redemption.id).where(
        Redemption.status == RedemptionStatus.AUTHORIZED, Redemption.expires_at <= now)
        .order_by(Redemption.id).limit(limit)))


def expire_due(db, policy: Policy, now: datetime | None = None) -> dict[str, Any]:
    """The expiry job's body: every authorised hold past its expires_at is expired and released,
    one transaction each (one period per transaction, docs/ARCHITECTURE.md#lock-order); a hold
    captured or voided meanwhile is left alone."""
    now = now or utcnow()
    expired = released = 0
    while True:
        with db.session() as session:
            ids = due_for_expiry(session, now)
        if not ids:
            break
        for rid in ids:
            with db.session() as session, session.begin():
                r = lock_redemption(session, policy, rid)
                if r is None or r.status != RedemptionStatus.AUTHORIZED or r.expires_at > now:
                    continue
                released += r.held
                void(session, policy, r, expired=True, now=now)
                expired += 1
        if len(ids) < 1000:
            break
    return {"expired": expired, "released": released}


def approve(session: Session, policy: Policy, r: Redemption, reason: str | None) -> Redemption:
    """Finance accepts a flagged redemption (a reason required): it may be settled."""
    if r.status == RedemptionStatus.CAPTURED and r.decided_at is not None:
        return r
    if r.status != RedemptionStatus.FLAGGED:
        raise Conflict("redemption_not_flagged", f"A {r.status} redemption awaits no decision", "status")
    if not (reason or "").strip():
        raise Invalid("reason_required", "A flagged redemption is approved only with a reason", "reason")
    before = view(r)
    r.status, r.decided_at, r.decision_reason = RedemptionStatus.CAPTURED, utcnow(), reason
    audit.append(session, AuditAction.REDEMPTION_APPROVED, "redemption", f"rdm_{r.id}", before=before,
                 after={**view(r), "reason": reason})
    return r


def reject(session: Session, policy: Policy, r: Redemption, reason: str) -> Redemption:
    """Finance refuses a captured or flagged redemption before settlement: its hold is released."""
    if r.status == RedemptionStatus.REJECTED:
        return r
    if r.status not in (RedemptionStatus.CAPTURED, RedemptionStatus.FLAGGED):
        raise Conflict("redemption_not_captured", f"A {r.status} redemption cannot be rejected", "status")
    before = view(r)
    if r.held:
        _release(session, policy, r, r.held, f"redemption {r.reference} rejected: {reason}")
    r.status, r.decided_at, r.decision_reason, r.released_at = (
        RedemptionStatus.REJECTED, utcnow(), reason, utcnow())
    r.settlement_id = None
    audit.append(session, AuditAction.REDEMPTION_REJECTED, "redemption", f"rdm_{r.id}", before=before,
                 after={**view(r), "reason": reason})
    return r


# --- reconciliation (docs/API.md#rec-steps, redemptions) ----------------------------------------

def redeemed_invoices(session: Session, period: str) -> dict[tuple[str, str], tuple[int, datetime]]:
    """(provider, invoice_no) → (redemption id, captured at) for the period's redeemed invoices:
    a claim naming one after its capture gets `invoice_already_redeemed`."""
    rows = session.execute(select(Redemption.provider_id, Redemption.invoice_no, Redemption.id,
                                  Redemption.captured_at)
                           .where(Redemption.period == period, Redemption.status.in_(REDEEMED)))
    return {(p, n): (rid, at) for p, n, rid, at in rows}


def claim_redeemed(redeemed: dict[tuple[str, str], tuple[int, datetime]], provider_id: str, invoice_no: str,
                   submitted_at: datetime | None) -> dict[str, Any] | None:
    """The claim item's `invoice_already_redeemed`, when a redemption captured the invoice
    before the claim was submitted (the earlier of the two keeps the invoice)."""
    found = redeemed.get((provider_id, invoice_no))
    if found is None:
        return None
    rid, captured_at = found
    if submitted_at is not None and captured_at is not None and submitted_at < captured_at:
        return None  # the claim came first: the redemption is flagged instead
    return {"code": Discrepancy.INVOICE_ALREADY_REDEEMED,
            "message": f"Invoice {invoice_no} is already redeemed at the provider by rdm_{rid}",
            "invoice_no": invoice_no, "redemption_id": f"rdm_{rid}"}


def _claimed_first(session: Session, period: str) -> dict[tuple[str, str], list[tuple[int, datetime, str]]]:
    """(provider, invoice_no) → the period's claims (not rejected) of the invoice's own enterprise."""
    out: dict[tuple[str, str], list[tuple[int, datetime, str]]] = defaultdict(list)
    for p, n, cid, at, status in session.execute(
        own_invoice_items(select(ClaimItem.provider_id, ClaimItem.invoice_no, Claim.id,
                                 Claim.submitted_at, Claim.status), period)
    ):
        out[(p, n)].append((cid, at, status))
    return out


def period_counts(session: Session, period: str) -> dict[str, Fen]:
    """A period's redeemed redemptions as a run's summary counts them (captured, flagged,
    settled, their subsidy), read from what is stored: the summary of a period read later."""
    summary = {"captured": 0, "flagged": 0, "settled": 0, "subsidy": 0}
    for status, subsidy in session.execute(select(Redemption.status, Redemption.subsidy).where(
            Redemption.period == period, Redemption.status.in_(REDEEMED))):
        summary["subsidy"] += subsidy
        summary[status if status in (RedemptionStatus.FLAGGED, RedemptionStatus.SETTLED) else "captured"] += 1
    return summary


def reconcile_period(session: Session, policy: Policy, period: str, *,
                     metered: dict[tuple[str, str], tuple[Fen, Fen]],
                     unlisted: Callable[[str], dict[str, Any] | None],
                     claim_level: Callable[[Enterprise | None], list[dict[str, Any]]],
                     now: datetime,
                     assess: Callable[[str, list[str], str | None], dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """Check the period's captured redemptions like claim items (docs/API.md#rec-steps): the
    provider listed, the enterprise eligible and the period in the window, the invoice issued to
    the enterprise for the period, |amount − invoice| and |metered − invoices| within tolerance
    (the provider's metered usage of the enterprise and month against all its redeemed invoices
    of it), the invoice not claimed first (`invoice_already_claimed`). Clean ones stay
    `captured`, others become `flagged` and wait for finance. Money does not move here: the
    subsidy was fixed at capture; a rejection releases it. Redemptions finance decided are not
    re-evaluated. `assess(uscc, provider_ids, legal_representative)` (risk_data.RiskFacts.assess)
    gives each one its `risk`, as a claim's: above the review threshold a clean redemption is
    flagged `risk_review` (docs/API.md#risk). Returns the counts for the run's summary."""
    rows = list(session.execute(
        select(Redemption, ProviderInvoice.amount, ProviderInvoice.enterprise_uscc)
        .outerjoin(ProviderInvoice, and_(ProviderInvoice.provider_id == Redemption.provider_id,
                                         ProviderInvoice.invoice_no == Redemption.invoice_no,
                                         ProviderInvoice.period == period))
        .where(Redemption.period == period, Redemption.status.in_(REDEEMED))
        .order_by(Redemption.id)))
    summary = {"captured": 0, "flagged": 0, "settled": 0, "subsidy": 0}
    if not rows:
        return summary
    # The provider's redeemed invoices of each (provider, enterprise): together they face the meter.
    invoiced: dict[tuple[str, str], Fen] = defaultdict(int)
    for r, amount, to in rows:
        if amount is not None and to == r.enterprise_uscc:
            invoiced[(r.provider_id, r.enterprise_uscc)] += amount
    claimed = _claimed_first(session, period)
    enterprises = {e.uscc: e for e in session.scalars(select(Enterprise).where(
        Enterprise.uscc.in_({r.enterprise_uscc for r, _, _ in rows})))}
    updates = []
    for r, invoice_amount, to in rows:
        summary["subsidy"] += r.subsidy
        if r.status == RedemptionStatus.SETTLED or r.decided_at is not None:
            summary["settled" if r.status == RedemptionStatus.SETTLED else "captured"] += 1
            continue
        found = list(claim_level(enterprises.get(r.enterprise_uscc)))
        listed = unlisted(r.provider_id)
        if listed:
            found.append(listed)
        if invoice_amount is None or to != r.enterprise_uscc:
            found.append({"code": Discrepancy.INVOICE_NOT_FOUND,
                          "message": f"No invoice {r.invoice_no} from {r.provider_id} to this enterprise for {period}",
                          "provider_id": r.provider_id, "invoice_no": r.invoice_no})
        else:
            total, eligible = metered.get((r.provider_id, r.enterprise_uscc), (0, 0))
            others = invoiced[(r.provider_id, r.enterprise_uscc)] - invoice_amount
            _base, codes = item_base(policy, r.amount or 0, invoice_amount, total - others, eligible - others)
            if INVOICE_AMOUNT_MISMATCH in codes:
                found.append({"code": Discrepancy.INVOICE_AMOUNT_MISMATCH,
                              "message": f"Captured {r.amount} fen but the invoice says {invoice_amount} fen",
                              "amount": r.amount, "invoice_amount": invoice_amount,
                              "difference": (r.amount or 0) - invoice_amount, "tolerance": policy.tolerance})
            if USAGE_INVOICE_MISMATCH in codes:
                found.append({"code": Discrepancy.USAGE_INVOICE_MISMATCH,
                              "message": f"Metered usage is {total} fen but the provider's redeemed invoices "
                                         f"to the enterprise say {invoiced[(r.provider_id, r.enterprise_uscc)]} fen",
                              "metered": total, "invoice_amount": invoiced[(r.provider_id, r.enterprise_uscc)],
                              "tolerance": policy.tolerance})
        for cid, submitted_at, status in claimed.get((r.provider_id, r.invoice_no or ""), []):
            if status == ClaimStatus.APPROVED or (r.captured_at is None or submitted_at < r.captured_at):
                found.append({"code": Discrepancy.INVOICE_ALREADY_CLAIMED,
                              "message": f"Invoice {r.invoice_no} is already claimed by clm_{cid}",
                              "invoice_no": r.invoice_no, "claim_id": f"clm_{cid}"})
                break
        risk = None
        if assess is not None:
            ent = enterprises.get(r.enterprise_uscc)
            risk = assess(r.enterprise_uscc, [r.provider_id], ent.legal_representative if ent else None)
            if not found and needs_review(policy.risk, risk):
                found.append(review_discrepancy(policy.risk, risk))
        status = RedemptionStatus.FLAGGED if found else RedemptionStatus.CAPTURED
        summary["flagged" if found else "captured"] += 1
        updates.append({"b_id": r.id, "status": status, "discrepancies": found, "reconciled_at": now,
                        "risk": risk})
    if updates:
        t = Redemption.__table__
        session.execute(update(t).where(t.c.id == bindparam("b_id")), updates)
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Redemption):
                session.expire(obj)
    return summary


def holding(session: Session, uscc: str, year: int | None = None) -> list[Redemption]:
    """An enterprise's redemptions that hold part of its quota (authorised, captured, flagged)."""
    stmt = select(Redemption).where(Redemption.enterprise_uscc == uscc, Redemption.status.in_(HOLDING))
    if year is not None:
        stmt = stmt.where(Redemption.year == year)
    return list(session.scalars(stmt.order_by(Redemption.id)))
