"""Enterprise claims: submission, reading, approval and rejection."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import ledger
from billing.models import Claim, ClaimItem
from billing.policy import Policy
from metering.models import Provider
from metering.periods import current_period, parse_period
from voucher import audit
from voucher.db import parse_row_id, utcnow
from voucher.errors import ApiError

OPEN = ("submitted", "verified", "flagged")


def _ts(value) -> str | None:
    return value.isoformat() if value else None


def claim_json(c: Claim) -> dict[str, Any]:
    items = [
        {
            "provider_id": i.provider_id,
            "invoice_no": i.invoice_no,
            "amount_paid": i.amount_paid,
            "invoice_amount": i.invoice_amount,
            "metered": i.metered,
            "base": i.base,
            "discrepancies": i.discrepancies or [],
        }
        for i in c.items
    ]
    codes = sorted({d["code"] for d in c.discrepancies or []}
                   | {d["code"] for i in c.items for d in i.discrepancies or []})
    return {
        "object": "claim",
        "id": f"clm_{c.id}",
        "enterprise_uscc": c.enterprise_uscc,
        "period": c.period,
        "year": int(c.period[:4]),
        "status": c.status,
        "currency": "CNY",
        "items": items,
        "other_subsidies": c.other_subsidies or [],
        "base": c.base,
        "computed": c.computed,
        "payable_before_cap": c.payable_before_cap,
        "payable": c.payable,
        "clawed_back": c.clawed_back,
        "cap_reached": c.cap_reached,
        "discrepancies": c.discrepancies or [],
        "discrepancy_codes": codes,
        "policy_id": c.policy_id,
        "decision_reason": c.decision_reason,
        "submitted_at": _ts(c.submitted_at),
        "reconciled_at": _ts(c.reconciled_at),
        "decided_at": _ts(c.decided_at),
    }


def parse_claim_id(value: str) -> int:
    return parse_row_id("clm_", value, "claim")


def submit_claim(session: Session, enterprise_uscc: str, period: str, items: list[dict[str, Any]],
                 other_subsidies: list[dict[str, Any]]) -> Claim:
    if period >= current_period():
        raise ApiError(422, "period_not_closed", f"Claims are for past months only; {period} is not over",
                       "period")
    parse_period(period)
    seen: dict[tuple[str, str], int] = {}
    provider_ids = {it["provider_id"] for it in items}
    known = set(session.scalars(select(Provider.id).where(Provider.id.in_(provider_ids))))
    for n, it in enumerate(items):
        if it["provider_id"] not in known:
            raise ApiError(422, "unknown_provider", f"No such provider: {it['provider_id']!r}",
                           f"items[{n}].provider_id")
        key = (it["provider_id"], it["invoice_no"])
        if key in seen:
            raise ApiError(422, "duplicate_item", f"Invoice {key[1]!r} is listed twice (items[{seen[key]}])",
                           f"items[{n}].invoice_no")
        seen[key] = n
    claim = Claim(enterprise_uscc=enterprise_uscc, period=period, status="submitted",
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


def _balance_for(session: Session, policy: Policy, claim: Claim) -> ledger.Balance:
    key = (claim.enterprise_uscc, int(claim.period[:4]))
    return ledger.lock_balances(session, policy, [key])[key]


def approve(session: Session, policy: Policy, claim: Claim, reason: str | None) -> Claim:
    """Move the claim's reservation to granted."""
    if claim.status == "approved":
        return claim  # idempotent
    if claim.status not in ("verified", "flagged"):
        raise ApiError(409, "claim_not_reconciled" if claim.status == "submitted" else "claim_decided",
                       f"A {claim.status} claim cannot be approved; "
                       + ("run the reconciliation of its period first" if claim.status == "submitted" else
                          "it was already decided"), "status")
    balance = _balance_for(session, policy, claim)
    ledger.grant(session, balance, claim.payable, claim_id=claim.id, policy_id=claim.policy_id or policy.id,
                 reason=reason or "approved")
    audit.append(session, "claim.approved", "claim", f"clm_{claim.id}",
                 before={"status": claim.status, "reserved": claim.payable},
                 after={"status": "approved", "granted": claim.payable, "reason": reason})
    claim.status, claim.decided_at, claim.decision_reason = "approved", utcnow(), reason
    return claim


def reject(session: Session, policy: Policy, claim: Claim, reason: str) -> Claim:
    """Release whatever the claim reserved; a rejected claim holds no quota and no invoice."""
    if claim.status == "rejected":
        return claim
    if claim.status not in OPEN:
        raise ApiError(409, "claim_decided", f"An {claim.status} claim cannot be rejected", "status")
    if claim.payable:
        balance = _balance_for(session, policy, claim)
        ledger.release(session, balance, claim.payable, claim_id=claim.id,
                       policy_id=claim.policy_id or policy.id, reason=f"rejected: {reason}")
    audit.append(session, "claim.rejected", "claim", f"clm_{claim.id}",
                 before={"status": claim.status, "reserved": claim.payable},
                 after={"status": "rejected", "released": claim.payable, "reason": reason})
    claim.status, claim.payable = "rejected", 0
    claim.decided_at, claim.decision_reason = utcnow(), reason
    return claim
