"""The demo's provider in redemption mode (核销, docs/API.md#redemptions): a government cloud
platform that lets enterprises pay only their own share and redeems the voucher itself. Beside
the three reimbursing providers it holds subsidies on a few enterprises' quotas — three captured
and settled in an approved quarterly batch, one voided, one expired by the expiry job, one
captured after the batch and so waiting for the next — and prints the figures
`voucher demo` shows (checked by tests/test_demo.py). Everything goes through the services."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import click
from sqlalchemy import select

from kernel.periods import local_bounds, period_dates, shift_period
from kernel.vocabulary import RedemptionStatus

PROVIDER_ID, PROVIDER_NAME = "jx-govcloud", "嘉兴政务云算力平台"
PRICE = 1500  # fen per H800 GPU-hour
# enterprise index (voucher/cli_demo.py ENTERPRISES, none with a part in another story)
# -> (month of the demo, GPU-hours authorised, GPU-hours captured, what becomes of it)
HOLDS = {18: (0, 600, 560, "settled"), 19: (0, 400, 400, "settled"), 21: (0, 900, 820, "settled"),
         22: (1, 300, 0, "voided"), 23: (1, 200, 0, "expired"), 24: (2, 500, 480, "captured")}


def _reference(i: int) -> str:
    return f"GC-ORDER-{i:04d}"


def _meter_and_invoice(session, uscc: str, i: int, period: str, hours: int, now: datetime) -> str:
    """The platform's metered usage of the captured hours and its full-amount invoice."""
    from billing.invoices import submit_invoice
    from metering.ingest import ingest_records

    start, last = local_bounds(period)
    ended = start + timedelta(days=12, hours=i)
    result = ingest_records(session, PROVIDER_ID, [{
        "record_id": f"gc-{i:04d}-{period}", "enterprise_uscc": uscc, "resource": "gpu.h800",
        "unit": "gpu_hour", "quantity": str(hours), "started_at": (ended - timedelta(hours=1)).isoformat(),
        "ended_at": ended.isoformat(), "amount": hours * PRICE, "currency": "CNY"}], now=now)
    assert result.accepted + result.duplicates == 1, result.results
    no = f"{period[2:4]}332099{i:012d}"
    submit_invoice(session, PROVIDER_ID, invoice_no=no, enterprise_uscc=uscc, period=period, amount=hours * PRICE,
                   tax_amount=hours * PRICE * 6 // 106, issued_on=(last - timedelta(days=1)).date())
    return no


def seed(db, policy, plan, now: datetime, others=()) -> None:
    """Register the platform, hold, capture, void, expire; reconcile the first month (with the
    programmes run beside `policy`, `others`); build and approve its quarter's batch; then capture
    one more (it waits for the next batch). Holds draw on the default programme's quota."""
    from billing import redemptions, settlements
    from billing.reconciliation import reconcile
    from billing.redemption_models import Redemption
    from kernel.db import utcnow
    from metering import contracts
    from metering.models import Provider

    first, _ = period_dates(shift_period(plan.periods[0], -3))
    _, last = period_dates(plan.periods[-1])
    with db.session() as session, session.begin():
        if session.get(Provider, PROVIDER_ID) is None:
            session.add(Provider(id=PROVIDER_ID, name=PROVIDER_NAME, kind="intelligent_computing", county="南湖区",
                                 listed_from=date(2025, 3, 1)))
            session.flush()
            for i in HOLDS:
                c, _ = contracts.register_contract(session, PROVIDER_ID, {
                    "enterprise_uscc": plan.usccs[i], "contract_no": f"HT-{PROVIDER_ID}-{i:03d}",
                    "signed_on": first, "valid_from": first, "valid_until": last})
                contracts.confirm_contract(session, c.id, plan.usccs[i], utcnow())

    def hold(i: int, at: datetime | None = None):
        month, hours, _captured, _fate = HOLDS[i]
        with db.session() as session, session.begin():
            r, _ = redemptions.authorize(session, policy, PROVIDER_ID, plan.usccs[i], _reference(i),
                                         hours * PRICE, plan.periods[month], now=at)
            return r.id

    def capture(i: int) -> None:
        month, _hours, captured, _fate = HOLDS[i]
        rid = hold(i)
        with db.session() as session, session.begin():
            no = _meter_and_invoice(session, plan.usccs[i], i, plan.periods[month], captured, now)
            r = redemptions.lock_redemption(session, policy, rid)
            redemptions.capture(session, policy, r, no, captured * PRICE)

    settled = [i for i, h in HOLDS.items() if h[3] == "settled"]
    for i in settled:
        capture(i)
    with db.session() as session, session.begin():
        reconcile(session, policy, plan.periods[0], others=others)
    quarter = settlements.quarter_of(plan.periods[0])
    with db.session() as session, session.begin():
        for rid in list(session.scalars(select(Redemption.id).where(
                Redemption.provider_id == PROVIDER_ID, Redemption.status == RedemptionStatus.FLAGGED))):
            redemptions.approve(session, policy, redemptions.lock_redemption(session, policy, rid),
                                "核对发票与计量无误 invoice and metering checked by hand")
        for batch in settlements.build(session, policy, quarter, PROVIDER_ID):
            settlements.approve(session, policy, batch.id, "demo")
    voided = hold(22)
    with db.session() as session, session.begin():
        redemptions.void(session, policy, redemptions.lock_redemption(session, policy, voided))
    hold(23, at=now - timedelta(days=policy.hold_days + 1))
    redemptions.expire_due(db, policy, now)
    capture(24)  # after the batch was approved: the next batch of the provider takes it


def figures(session) -> dict[str, Any]:
    from billing.redemption_models import Redemption, SettlementBatch

    rows = list(session.scalars(select(Redemption).where(Redemption.provider_id == PROVIDER_ID)))
    batches = list(session.scalars(select(SettlementBatch).where(SettlementBatch.provider_id == PROVIDER_ID)
                                   .order_by(SettlementBatch.id)))
    by = {s: [r for r in rows if r.status == s] for s in RedemptionStatus}
    return {"holds": len(rows), "by_status": {s.value: len(v) for s, v in by.items() if v},
            "held": sum(r.held for r in rows), "settled": sum(r.subsidy for r in by[RedemptionStatus.SETTLED]),
            "batches": [(f"stl_{b.id}", b.quarter, b.status, b.redemptions, b.amount, b.subsidy) for b in batches]}


def print_figures(db) -> dict[str, Any]:
    from kernel.money import yuan

    with db.session() as session:
        f = figures(session)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(f["by_status"].items()))
    click.echo(f"\nRedemptions at {PROVIDER_ID} (settlement by redemption): {f['holds']} holds ({counts}); "
               f"still held ¥{yuan(f['held'])}, settled ¥{yuan(f['settled'])}")
    for sid, quarter, status, n, amount, subsidy in f["batches"]:
        click.echo(f"  settlement {sid} {quarter}: {status}, {n} redemptions, invoiced ¥{yuan(amount)}, "
                   f"subsidy ¥{yuan(subsidy)}")
    return f
