"""The monthly reconciliation (SPEC §7).

Reads with a handful of aggregate queries (claims with items, invoices, metered sums,
balances), evaluates each claim with pure functions, then adjusts reservations by the
difference from what the claim already holds — so a re-run changes nothing and never
reserves twice. Approved claims whose usage was voided afterwards are clawed back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from billing import ledger
from billing.claims import OPEN
from billing.models import Claim, ClaimAdjustment, ProviderInvoice, Reconciliation
from billing.policy import Policy, compute_claim, in_window
from metering.models import Enterprise, Provider, UsageRecord
from metering.periods import SHANGHAI, parse_period
from metering.registry import provider_listed
from voucher import audit
from voucher.db import utcnow

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
    eligible_metered: Fen | None = None  # the part that ended inside the policy window


@dataclass
class ItemOutcome:
    base: Fen
    discrepancies: list[dict[str, Any]] = field(default_factory=list)


def evaluate_item(policy: Policy, f: ItemFacts) -> ItemOutcome:
    """Checks 1–5 of §7 for one item (pure)."""
    tol = policy.tolerance
    found: list[dict[str, Any]] = []
    if f.invoice_amount is None:
        found.append({"code": "invoice_not_found",
                      "message": f"No invoice {f.invoice_no} from {f.provider_id} to this enterprise for the period",
                      "provider_id": f.provider_id, "invoice_no": f.invoice_no})
        return ItemOutcome(0, found)
    if abs(f.amount_paid - f.invoice_amount) > tol:
        found.append({"code": "invoice_amount_mismatch",
                      "message": f"Paid {f.amount_paid} fen but the invoice says {f.invoice_amount} fen",
                      "amount_paid": f.amount_paid, "invoice_amount": f.invoice_amount,
                      "difference": f.amount_paid - f.invoice_amount, "tolerance": tol})
    if f.first_claim_id is not None:
        found.append({"code": "invoice_claimed_twice",
                      "message": f"Invoice {f.invoice_no} is already claimed by clm_{f.first_claim_id}",
                      "invoice_no": f.invoice_no, "first_claim_id": f"clm_{f.first_claim_id}"})
    if abs(f.metered - f.invoice_amount) > tol:
        found.append({"code": "usage_invoice_mismatch",
                      "message": f"Metered usage is {f.metered} fen but the invoice says {f.invoice_amount} fen",
                      "metered": f.metered, "invoice_amount": f.invoice_amount,
                      "difference": f.metered - f.invoice_amount, "tolerance": tol})
    if found:
        return ItemOutcome(0, found)
    base = min(f.amount_paid, f.invoice_amount, f.metered)
    if f.eligible_metered is not None:  # usage before effective_from never earns subsidy
        base = min(base, f.eligible_metered)
    return ItemOutcome(base, [])


def claim_level(policy: Policy, period: str, enterprise: Enterprise | None,
                providers: dict[str, Provider], provider_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Claim-level checks of §7; any of them sets every item's base to 0 (pure)."""
    found: list[dict[str, Any]] = []
    if not in_window(policy, period):
        found.append({"code": "outside_policy_window",
                      "message": f"{period} is outside the policy window "
                                 f"{policy.effective_from} – {policy.effective_until}",
                      "period": period, "effective_from": policy.effective_from.isoformat(),
                      "effective_until": policy.effective_until.isoformat()})
    if enterprise is None or not enterprise.eligible:
        found.append({"code": "enterprise_not_eligible",
                      "message": "The enterprise is not eligible for the programme"})
    year, month = parse_period(period)
    first = date(year, month, 1)
    last = (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    for pid in sorted(set(provider_ids)):
        p = providers.get(pid)
        if p is None or not provider_listed(p, first, last):
            found.append({"code": "provider_not_listed",
                          "message": f"Provider {pid} was not in the catalogue during {period}",
                          "provider_id": pid,
                          "listed_from": p.listed_from.isoformat() if p and p.listed_from else None,
                          "listed_until": p.listed_until.isoformat() if p and p.listed_until else None})
    return found


def window_bounds(policy: Policy) -> tuple[datetime, datetime]:
    """Usage counts when it ended within [effective_from, effective_until] in Asia/Shanghai."""
    start = datetime.combine(policy.effective_from, time.min, SHANGHAI)
    end = datetime.combine(policy.effective_until + timedelta(days=1), time.min, SHANGHAI)
    return start, end


def metered_sums(session: Session, policy: Policy, period: str) -> dict[tuple[str, str], tuple[Fen, Fen]]:
    """(whole month, in-window part) of active usage per (provider, enterprise): one query."""
    start, end = window_bounds(policy)
    in_window = case((and_(UsageRecord.ended_at >= start, UsageRecord.ended_at < end), UsageRecord.amount),
                     else_=0)
    rows = session.execute(
        select(UsageRecord.provider_id, UsageRecord.enterprise_uscc, func.sum(UsageRecord.amount),
               func.sum(in_window))
        .where(UsageRecord.period == period, UsageRecord.status == "active")
        .group_by(UsageRecord.provider_id, UsageRecord.enterprise_uscc)
    )
    return {(p, e): (int(total), int(eligible)) for p, e, total, eligible in rows}


def _facts_for(claim: Claim, invoices, metered, holder) -> list[ItemFacts]:
    facts = []
    for item in claim.items:
        inv = invoices.get((item.provider_id, item.invoice_no))
        if inv is not None and inv.enterprise_uscc != claim.enterprise_uscc:
            inv = None
        owner = holder.get((item.provider_id, item.invoice_no))
        total, eligible = metered.get((item.provider_id, claim.enterprise_uscc), (0, 0))
        facts.append(ItemFacts(item.provider_id, item.invoice_no, item.amount_paid,
                               inv.amount if inv else None, total,
                               owner if owner is not None and owner != claim.id else None, eligible))
    return facts


def reconcile(session: Session, policy: Policy, period: str) -> tuple[Reconciliation, bool]:
    """Run §7 for one period inside the caller's transaction. Returns (run, first_time)."""
    parse_period(period)
    year = int(period[:4])
    claims = list(session.scalars(
        select(Claim).where(Claim.period == period).order_by(Claim.enterprise_uscc, Claim.id)))
    usccs = sorted({c.enterprise_uscc for c in claims})
    invoices = {(i.provider_id, i.invoice_no): i for i in session.scalars(
        select(ProviderInvoice).where(ProviderInvoice.period == period))}
    metered = metered_sums(session, policy, period)
    enterprises = {e.uscc: e for e in session.scalars(select(Enterprise).where(Enterprise.uscc.in_(usccs)))} \
        if usccs else {}
    providers = {p.id: p for p in session.scalars(select(Provider))}

    # Who holds each invoice: an approved claim first, else the earliest claim not rejected.
    holder: dict[tuple[str, str], int] = {}
    for c in sorted(claims, key=lambda c: (c.status != "approved", c.id)):
        if c.status == "rejected":
            continue
        for item in c.items:
            holder.setdefault((item.provider_id, item.invoice_no), c.id)

    balances = ledger.lock_balances(session, policy, [(u, year) for u in usccs])
    now = utcnow()
    for claim in sorted(claims, key=lambda c: c.id):
        if claim.status in OPEN:
            _evaluate_open(session, policy, claim, balances[(claim.enterprise_uscc, year)],
                           _facts_for(claim, invoices, metered, holder),
                           claim_level(policy, period, enterprises.get(claim.enterprise_uscc),
                                       providers, [i.provider_id for i in claim.items]), now)
        elif claim.status == "approved":
            _claw_back_if_needed(session, policy, claim, balances[(claim.enterprise_uscc, year)],
                                 metered, now)

    session.flush()
    run = session.get(Reconciliation, period)
    first_time = run is None
    if run is None:
        run = Reconciliation(period=period, status="completed", runs=0, policy_id=policy.id, first_run_at=now)
        session.add(run)
    run.runs += 1
    run.last_run_at = now
    run.policy_id = policy.id
    run.summary = summarise(session, period, claims)
    audit.append(session, "reconciliation.run", "reconciliation", f"rec_{period}",
                 after={"run": run.runs, "policy_id": policy.id, "summary": run.summary})
    return run, first_time


def _evaluate_open(session: Session, policy: Policy, claim: Claim, balance: ledger.Balance,
                   facts: list[ItemFacts], claim_codes: list[dict[str, Any]], now: datetime) -> None:
    outcomes = [evaluate_item(policy, f) for f in facts]
    bases = [0 if claim_codes else o.base for o in outcomes]
    others = [int(s["amount"]) for s in claim.other_subsidies or []]
    held = claim.payable if claim.status in ("verified", "flagged") else 0
    amounts = compute_claim(policy, bases, others, balance.remaining + held)
    discrepancies = list(claim_codes)
    if amounts.cap_reached:
        discrepancies.append({"code": "cap_reached",
                              "message": f"Cut to the remaining quota: {amounts.payable} of "
                                         f"{amounts.payable_before_cap} fen",
                              "payable_before_cap": amounts.payable_before_cap,
                              "remaining": balance.remaining + held, "cap": balance.cap,
                              "payable": amounts.payable})
    delta = amounts.payable - held
    if delta > 0:
        ledger.reserve(session, balance, delta, claim_id=claim.id, policy_id=policy.id,
                       reason=f"reconciliation {claim.period}")
    elif delta < 0:
        ledger.release(session, balance, -delta, claim_id=claim.id, policy_id=policy.id,
                       reason=f"reconciliation {claim.period}: payable lowered")
    for item, fact, outcome, base in zip(claim.items, facts, outcomes, bases, strict=True):
        item.invoice_amount = fact.invoice_amount
        item.metered = fact.metered
        item.base = base
        item.discrepancies = outcome.discrepancies
    flagged = bool(claim_codes) or any(o.discrepancies for o in outcomes)
    claim.status = "flagged" if flagged else "verified"
    claim.base, claim.computed = amounts.base, amounts.computed
    claim.payable_before_cap, claim.payable = amounts.payable_before_cap, amounts.payable
    claim.cap_reached = amounts.cap_reached
    claim.discrepancies = discrepancies
    claim.policy_id = policy.id
    claim.reconciled_at = now


def _claw_back_if_needed(session: Session, policy: Policy, claim: Claim, balance: ledger.Balance,
                         metered: dict[tuple[str, str], tuple[Fen, Fen]], now: datetime) -> None:
    """Usage voided after approval lowers what the claim may keep; never raises a grant."""
    bases = []
    for item in claim.items:
        if item.base == 0 or item.invoice_amount is None:
            bases.append(0)
            continue
        total, eligible = metered.get((item.provider_id, claim.enterprise_uscc), (0, 0))
        fact = ItemFacts(item.provider_id, item.invoice_no, item.amount_paid, item.invoice_amount,
                         total, None, eligible)
        bases.append(evaluate_item(policy, fact).base)
    others = [int(s["amount"]) for s in claim.other_subsidies or []]
    target = min(compute_claim(policy, bases, others, UNBOUNDED).payable, claim.payable)
    cut = claim.payable - target
    if cut <= 0:
        return
    reason = (f"usage voided after approval: bases now {sum(bases)} fen (were {claim.base}); "
              f"grant {claim.payable} → {target} fen")
    ledger.clawback(session, balance, cut, claim_id=claim.id, policy_id=claim.policy_id or policy.id,
                    reason=reason)
    session.add(ClaimAdjustment(claim_id=claim.id, period=claim.period, kind="clawback", amount=-cut,
                                reason=reason, created_at=now))
    audit.append(session, "claim.clawed_back", "claim", f"clm_{claim.id}",
                 before={"granted": claim.payable, "clawed_back": claim.clawed_back},
                 after={"granted": target, "clawed_back": claim.clawed_back + cut, "reason": reason})
    claim.payable = target
    claim.clawed_back += cut


def summarise(session: Session, period: str, claims: list[Claim]) -> dict[str, Any]:
    by_status = Counter(c.status for c in claims)
    codes: Counter = Counter()
    totals = defaultdict(int)
    for c in claims:
        for d in c.discrepancies or []:
            codes[d["code"]] += 1
        for item in c.items:
            for d in item.discrepancies or []:
                codes[d["code"]] += 1
            totals["amount_paid"] += item.amount_paid
            totals["invoiced"] += item.invoice_amount or 0
            totals["metered"] += item.metered or 0
        totals["base"] += c.base
        totals["computed"] += c.computed
        if c.status in ("verified", "flagged"):
            totals["reserved"] += c.payable
        if c.status == "approved":
            totals["granted"] += c.payable
        totals["clawed_back"] += c.clawed_back
        totals["payable"] += c.payable
    return {
        "claims": len(claims),
        "by_status": {s: by_status.get(s, 0) for s in ("submitted", "verified", "flagged", "approved", "rejected")},
        "discrepancies": dict(sorted(codes.items())),
        "cap_reached": sum(1 for c in claims if c.cap_reached),
        "totals": {k: totals[k] for k in ("amount_paid", "invoiced", "metered", "base", "computed",
                                          "payable", "reserved", "granted", "clawed_back")},
        "currency": "CNY",
    }


def adjustments_of(session: Session, period: str) -> list[ClaimAdjustment]:
    return list(session.scalars(select(ClaimAdjustment).where(ClaimAdjustment.period == period)
                                .order_by(ClaimAdjustment.id)))


def reconciliation_json(run: Reconciliation, claims: list[dict[str, Any]] | None = None,
                        adjustments: list[ClaimAdjustment] | None = None) -> dict[str, Any]:
    body = {
        "object": "reconciliation",
        "id": f"rec_{run.period}",
        "period": run.period,
        "status": run.status,
        "runs": run.runs,
        "policy_id": run.policy_id,
        "first_run_at": run.first_run_at.isoformat(),
        "last_run_at": run.last_run_at.isoformat(),
        "summary": run.summary,
    }
    if claims is not None:
        body["claims"] = claims
    if adjustments is not None:
        body["adjustments"] = [
            {"object": "claim_adjustment", "id": f"adj_{a.id}", "claim_id": f"clm_{a.claim_id}",
             "kind": a.kind, "amount": a.amount, "reason": a.reason, "created_at": a.created_at.isoformat()}
            for a in adjustments
        ]
    return body
