"""The demo's risk cases (docs/API.md#risk): contracts and list prices for the clean
programme, one planted case per signal in the latest month, and the recall / false-positive
figures `voucher demo` prints (checked by tests/test_demo.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import click
from sqlalchemy import select

from kernel.periods import local_bounds, period_dates, shift_period

# enterprise index (voucher/cli_demo.py ENTERPRISES, none with a part in the discrepancy story)
# -> the signal planted in its latest month
PLANTED = {11: "no_contract", 13: "price_above_catalogue", 14: "related_party",
           16: "ineligible_resource", 17: "usage_spike"}


def plant(plan, providers, enterprises) -> None:
    """Change the plan's latest month for the planted cases (called by build_plan)."""
    last = plan.periods[-1]
    start, _ = local_bounds(last)
    for records in plan.records.values():
        for r in records:
            if r["ended_at"][:7] != last:
                continue
            if r["enterprise_uscc"] == plan.usccs[13]:  # billed 50 % above the list price
                r["amount"] = int((Decimal(r["amount"]) * 3 / 2).quantize(Decimal(1), ROUND_HALF_UP))
    u16, u17 = plan.usccs[16], plan.usccs[17]
    ended = start + timedelta(days=20)
    plan.records["jx-hpc"].append(_record("jx-hpc-disk-1", u16, "storage.ssd", "node_hour", "40", 1_600_000, ended))
    plan.records["jx-hpc"].append(_record("jx-hpc-burst-1", u17, "gpu.a100", "gpu_hour", "100000", 88_000_000,
                                          ended))


def _record(rid, uscc, resource, unit, quantity, amount, ended) -> dict[str, Any]:
    return {"record_id": rid, "enterprise_uscc": uscc, "resource": resource, "unit": unit, "quantity": quantity,
            "started_at": (ended - timedelta(hours=1)).isoformat(timespec="seconds"),
            "ended_at": ended.isoformat(timespec="seconds"), "amount": amount, "currency": "CNY",
            "metadata": {"planted": True}}


def register(session, plan, providers, enterprises) -> None:
    """Confirmed contracts for every pair that trades (but the no_contract case), the list
    prices, and the related-party link, through metering/contracts.py."""
    from kernel.db import utcnow
    from metering import contracts
    from metering.contracts import Contract

    if session.scalars(select(Contract)).first() is not None:
        return
    first, _ = period_dates(shift_period(plan.periods[0], -3))
    _, last = period_dates(plan.periods[-1])
    for p in providers:
        for res in p.resources:
            contracts.add_price(session, p.id, {"resource": res.resource, "unit": res.unit, "unit_price": res.price,
                                                "effective_from": first})
    for i, (e, uscc) in enumerate(zip(enterprises, plan.usccs, strict=True)):
        if PLANTED.get(i) == "no_contract":
            continue
        for pid in sorted({pid for pid, _ in e.uses} | ({"jx-hpc"} if i in (16, 17) else set())):
            c, _ = contracts.register_contract(session, pid, {
                "enterprise_uscc": uscc, "contract_no": f"HT-{pid}-{i:03d}", "signed_on": first,
                "valid_from": first, "valid_until": last})
            contracts.confirm_contract(session, c.id, uscc, utcnow())
    related = next(pid for pid, _ in enterprises[14].uses)
    contracts.add_related_party(session, {"provider_id": related, "enterprise_uscc": plan.usccs[14],
                                          "relation": "同一实际控制人 same ultimate controller"})


def figures(session, plan) -> dict[str, Any]:
    """Recall (planted signals found on the latest month's claims) and false positives (clean
    claims flagged `risk_review`)."""
    from billing.models import Claim

    period = plan.periods[-1]
    claims = list(session.scalars(select(Claim).where(Claim.period == period, Claim.enterprise_uscc.in_(plan.usccs))))
    by_uscc: dict[str, list[Claim]] = {}
    for c in claims:
        by_uscc.setdefault(c.enterprise_uscc, []).append(c)
    found, missed = [], []
    for i, code in PLANTED.items():
        ok = any(code in {s["code"] for s in (c.risk or {}).get("signals", [])}
                 for c in by_uscc.get(plan.usccs[i], []))
        (found if ok else missed).append(code)
    planted = {plan.usccs[i] for i in PLANTED}
    clean = [c for c in claims if c.enterprise_uscc not in planted and c.risk is not None]
    flagged = [c for c in clean if any(d.get("code") == "risk_review" for d in c.discrepancies or [])]
    return {"planted": len(PLANTED), "found": len(found), "missed": missed, "clean": len(clean),
            "false_positives": len(flagged),
            "recall": len(found) / len(PLANTED), "fp_rate": len(flagged) / len(clean) if clean else 0.0}


def print_figures(db, plan) -> dict[str, Any]:
    with db.session() as session:
        f = figures(session, plan)
    click.echo(f"\nRisk review ({plan.periods[-1]}): planted {f['planted']} cases, found {f['found']} "
               f"(recall {f['recall']:.0%}); clean claims flagged by risk {f['false_positives']} of {f['clean']} "
               f"(false positives {f['fp_rate']:.1%})")
    if f["missed"]:
        click.echo(f"  missed: {', '.join(f['missed'])}")
    return f
