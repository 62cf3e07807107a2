"""Enterprise claims: submission, reading, approval and rejection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from billing import ledger
from billing.models import Claim, ClaimItem, ProviderInvoice
from billing.policy import Policy, refuse_unless_mode
from kernel import audit
from kernel.billing_periods import refuse_if_closed
from kernel.db import parse_row_id, utcnow
from kernel.errors import Conflict, Invalid
from kernel.periods import current_period, parse_period, period_year
from kernel.vocabulary import OPEN as VOCAB_OPEN
from kernel.vocabulary import RECONCILED, ClaimStatus, SettlementMode
from metering.models import Enterprise, Provider

OPEN = VOCAB_OPEN  # kernel/vocabulary.py


def parse_claim_id(value: str) -> int:
    return parse_row_id("clm_", value, "claim")


@dataclass(frozen=True)
class ClaimLimits:
    """How many undecided claims an enterprise may have per period, and items per claim
    (docs/API.md#claim-submit). The values come from config/settings.py, passed down by the
    composition root."""

    undecided_per_period: int
    items: int


def submit_claim(session: Session, enterprise_uscc: str, period: str, items: list[dict[str, Any]],
                 other_subsidies: list[dict[str, Any]], limits: ClaimLimits | None = None, *,
                 policy: Policy | None = None) -> Claim:
    """Store a claim for a past month. With `limits` (the API and the console pass the
    settings'), more items than allowed is Invalid `too_many_items` and a claim beyond the
    period's undecided ones is Invalid `too_many_claims`. With `policy` (the API and the
    console pass it), a policy that turned reimbursement off is Invalid `settlement_mode_disabled`."""
    if policy is not None:
        refuse_unless_mode(policy, SettlementMode.REIMBURSEMENT)
    if period >= current_period():
        raise Invalid("period_not_closed", f"Claims are for past months only; {period} is not over",
                      "period")
    parse_period(period)
    refuse_if_closed(session, period)  # and holds the period's shared lock: a close waits for this claim
    if limits is not None:
        if len(items) > limits.items:
            raise Invalid("too_many_items", f"A claim lists at most {limits.items} invoices, "
                          f"this one {len(items)}", "items")
        # One submission per enterprise at a time counts (the enterprise row's lock; a no-op on
        # SQLite, whose writers are serial): two at once could both see nine.
        session.execute(select(Enterprise.uscc).where(Enterprise.uscc == enterprise_uscc)
                        .with_for_update())
        undecided = session.scalar(select(func.count()).select_from(Claim).where(
            Claim.enterprise_uscc == enterprise_uscc, Claim.period == period, Claim.status.in_(OPEN)))
        if undecided >= limits.undecided_per_period:
            raise Invalid("too_many_claims", f"{enterprise_uscc} already has {undecided} undecided "
                          f"claims for {period}; at most {limits.undecided_per_period}", "period")
    seen: dict[tuple[str, str], int] = {}
    provider_ids = {it["provider_id"] for it in items}
    known = set(session.scalars(select(Provider.id).where(Provider.id.in_(provider_ids))))
    for n, it in enumerate(items):
        if it["provider_id"] not in known:
            raise Invalid("unknown_provider", f"No such provider: {it['provider_id']!r}",
                          f"items[{n}].provider_id")
        key = (it["provider_id"], it["invoice_no"])
        if key in seen:
            raise Invalid("duplicate_item", f"Invoice {key[1]!r} is listed twice (items[{seen[key]}])",
                          f"items[{n}].invoice_no")
        seen[key] = n
    claim = Claim(enterprise_uscc=enterprise_uscc, period=period, status=ClaimStatus.SUBMITTED,
                  other_subsidies=other_subsidies, items=[
                      ClaimItem(position=n, provider_id=it["provider_id"], invoice_no=it["invoice_no"],
                                amount_paid=it["amount_paid"], discrepancies=[])
                      for n, it in enumerate(items)
                  ], discrepancies=[])
    session.add(claim)
    session.flush()
    audit.append(session, "claim.submitted", "claim", f"clm_{claim.id}", after={
        "enterprise_uscc": enterprise_uscc, "period": period, "items": items,
        "other_subsidies": other_subsidies})
    return claim


def get_claim(session: Session, claim_id: int, *, lock: bool = False) -> Claim | None:
    stmt = select(Claim).where(Claim.id == claim_id)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def own_invoice_items(stmt: Select, period: str) -> Select:
    """`stmt` over the items of the period's claims (not rejected) that name an invoice of the
    period issued to the claim's own enterprise (docs/API.md#rec-steps)."""
    return (stmt.join(Claim, Claim.id == ClaimItem.claim_id)
            .join(ProviderInvoice, and_(ProviderInvoice.provider_id == ClaimItem.provider_id,
                                        ProviderInvoice.invoice_no == ClaimItem.invoice_no,
                                        ProviderInvoice.period == period,
                                        ProviderInvoice.enterprise_uscc == Claim.enterprise_uscc))
            .where(Claim.period == period, Claim.status != ClaimStatus.REJECTED))


def lock_claim(session: Session, policy: Policy, claim_id: int) -> Claim | None:
    """The claim, locked for a decision in the one lock order (docs/ARCHITECTURE.md#lock-order):
    its period's row (shared: decisions wait for a run of the period, and a run for them), then
    its balance row, then the claim itself — re-read, so its status is the committed one.

    A claim's enterprise and period never change, so the unlocked first read that names the
    rows to lock cannot be stale in what matters.
    """
    return ledger.lock_in_order(session, policy, Claim, claim_id)


def _balance_for(session: Session, policy: Policy, claim: Claim) -> ledger.Balance:
    key = (claim.enterprise_uscc, period_year(claim.period))
    return ledger.lock_balances(session, policy, [key])[key]


def _other_programmes(session: Session, others: Sequence[Policy], claim: Claim, kind: str, reason: str) -> None:
    """Grant (or release, `kind`) what the claim holds under the other programmes
    (docs/POLICY.md#programmes), their balance rows locked after the default programme's, in
    `others`' order (docs/ARCHITECTURE.md#lock-order). A programme no longer configured keeps
    its reservation (and says so in the figure) until it is configured again."""
    held = {p["programme_id"]: p for p in claim.programmes or [] if int(p["payable"]) > 0}
    if not held:
        return
    for other in others:
        figure = held.get(other.id)
        if figure is None:
            continue
        ledger.transfer(session, kind, _balance_for(session, other, claim), int(figure["payable"]),
                        claim_id=claim.id, policy_id=other.id, reason=reason)
    if kind == "release":
        claim.programmes = [{**p, "payable": 0} if p["programme_id"] in {o.id for o in others} else p
                            for p in claim.programmes or []]


def approve(session: Session, policy: Policy, claim: Claim, reason: str | None,
            others: Sequence[Policy] = ()) -> Claim:
    """Move the claim's reservation to granted; a flagged claim needs a (non-blank) reason.
    `others`: the programmes run beside `policy` (docs/POLICY.md#programmes): what the claim
    holds under each is granted too."""
    if claim.status == ClaimStatus.APPROVED:
        return claim  # idempotent
    if claim.status == ClaimStatus.WAITLISTED:
        raise Conflict("claim_waitlisted", "A waitlisted claim holds no budget yet: a reconciliation "
                       "run funds it when budget frees up (docs/API.md#budget)", "status")
    if claim.status not in RECONCILED:
        raise Conflict("claim_not_reconciled" if claim.status == ClaimStatus.SUBMITTED else "claim_decided",
                       f"A {claim.status} claim cannot be approved; "
                       + ("run the reconciliation of its period first" if claim.status == ClaimStatus.SUBMITTED else
                          "it was already decided"), "status")
    if claim.status == "flagged" and not (reason or "").strip():
        # A flagged claim carries discrepancies: finance must say why it pays it anyway
        # (docs/API.md#claim-decide). The API and the console both obey this.
        raise Invalid("reason_required", "A flagged claim is approved only with a reason", "reason")
    balance = _balance_for(session, policy, claim)
    ledger.grant(session, balance, claim.payable, claim_id=claim.id, policy_id=claim.policy_id or policy.id,
                 reason=reason or "approved")
    _other_programmes(session, others, claim, "grant", reason or "approved")
    audit.append(session, "claim.approved", "claim", f"clm_{claim.id}",
                 before={"status": claim.status, "reserved": claim.payable},
                 after={"status": ClaimStatus.APPROVED.value, "granted": claim.payable, "reason": reason})
    claim.status, claim.decided_at, claim.decision_reason = ClaimStatus.APPROVED, utcnow(), reason
    return claim


def reject(session: Session, policy: Policy, claim: Claim, reason: str, others: Sequence[Policy] = ()) -> Claim:
    """Release whatever the claim reserved, under every programme (`others`: as approve's);
    a rejected claim holds no quota and no invoice."""
    if claim.status == ClaimStatus.REJECTED:
        return claim
    if claim.status not in OPEN:
        raise Conflict("claim_decided", f"An {claim.status} claim cannot be rejected", "status")
    if claim.payable:
        balance = _balance_for(session, policy, claim)
        ledger.release(session, balance, claim.payable, claim_id=claim.id,
                       policy_id=claim.policy_id or policy.id, reason=f"rejected: {reason}")
    _other_programmes(session, others, claim, "release", f"rejected: {reason}")
    audit.append(session, "claim.rejected", "claim", f"clm_{claim.id}",
                 before={"status": claim.status, "reserved": claim.payable},
                 after={"status": ClaimStatus.REJECTED.value, "released": claim.payable, "reason": reason})
    claim.status, claim.payable = ClaimStatus.REJECTED, 0
    claim.decided_at, claim.decision_reason = utcnow(), reason
    return claim
