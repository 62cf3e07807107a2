"""Quarterly settlement with providers (docs/API.md#settlements).

Per provider and quarter one batch lists its captured, clean redemptions (reconciled without a
discrepancy, or flagged and then accepted by finance); finance approves the batch, which posts
every hold to granted (billing/ledger.py `hold_post`) and marks the redemptions `settled`. The
payment file for the treasury (CSV, XLSX) lists them with totals to the fen, through the
reports' formula-safe writers (billing/reports.py).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from typing import IO, Any

from openpyxl import Workbook
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import ledger
from billing.policy import Policy
from billing.redemption_models import Redemption, SettlementBatch
from billing.reports import BOLD, FORMATS, TOTAL_FILL, _csv_text, _Sheet
from kernel import audit
from kernel.db import parse_row_id, utcnow
from kernel.errors import Conflict, Invalid
from kernel.money import yuan
from kernel.vocabulary import AuditAction, RedemptionStatus, SettlementStatus
from metering.models import Enterprise, Provider

Fen = int
QUARTER_RE = re.compile(r"^(20[0-9]{2}|2100)Q([1-4])$")

__all__ = ["FORMATS", "approve", "build", "parse_quarter", "quarter_of", "write_payment_file"]


def parse_quarter(value: str) -> list[str]:
    """`2026Q1` → its three periods (`2026-01` … `2026-03`); ValueError otherwise."""
    m = QUARTER_RE.fullmatch(value or "")
    if not m:
        raise ValueError(f"{value!r} is not a quarter (YYYYQn, e.g. 2026Q1)")
    year, q = int(m.group(1)), int(m.group(2))
    return [f"{year}-{month:02d}" for month in range(3 * q - 2, 3 * q + 1)]


def quarter_of(period: str) -> str:
    year, month = period.split("-")
    return f"{year}Q{(int(month) - 1) // 3 + 1}"


def parse_settlement_id(value: str) -> int:
    return parse_row_id("stl_", value, "settlement")


def _late_periods(session: Session, quarter: str, provider_id: str | None) -> dict[str, list[str]]:
    """provider → the periods of its earlier quarters whose batch is approved (final): a
    redemption of one of them cleared after that approval joins the provider's next batch."""
    stmt = select(SettlementBatch.provider_id, SettlementBatch.quarter).where(
        SettlementBatch.status == SettlementStatus.APPROVED, SettlementBatch.quarter < quarter)
    if provider_id:
        stmt = stmt.where(SettlementBatch.provider_id == provider_id)
    late: dict[str, list[str]] = {}
    for pid, q in session.execute(stmt):
        late.setdefault(pid, []).extend(parse_quarter(q))
    return late


def build(session: Session, policy: Policy, quarter: str, provider_id: str | None = None) -> list[SettlementBatch]:
    """Create (or top up, while pending) each provider's batch of `quarter`: one per (provider,
    quarter), by its unique key, so the job and the command may run it any number of times.
    An approved batch is final: a redemption of its quarter cleared after the approval (captured
    late, or accepted by finance late) joins the provider's next batch built — the batch of a
    later quarter — and the payment file shows its own period."""
    try:
        periods = parse_quarter(quarter)
    except ValueError as exc:
        raise Invalid("invalid_quarter", str(exc), "quarter") from None
    late = _late_periods(session, quarter, provider_id)
    due = [Redemption.status == RedemptionStatus.CAPTURED, Redemption.reconciled_at.is_not(None),
           Redemption.settlement_id.is_(None)]
    belongs = or_(Redemption.period.in_(periods),
                  *(and_(Redemption.provider_id == pid, Redemption.period.in_(ps)) for pid, ps in late.items()))
    stmt = select(Redemption.provider_id).where(belongs, *due).distinct()
    if provider_id:
        stmt = stmt.where(Redemption.provider_id == provider_id)
    batches = []
    for pid in sorted(session.scalars(stmt)):
        batch = session.scalars(select(SettlementBatch).where(
            SettlementBatch.provider_id == pid, SettlementBatch.quarter == quarter).with_for_update()).first()
        if batch is None:
            try:
                with session.begin_nested():
                    batch = SettlementBatch(provider_id=pid, quarter=quarter, status=SettlementStatus.PENDING,
                                            redemptions=0, amount=0, subsidy=0, policy_id=policy.id,
                                            created_at=utcnow())
                    session.add(batch)
                    session.flush()
            except IntegrityError:  # another run created it: take theirs
                batch = session.scalars(select(SettlementBatch).where(
                    SettlementBatch.provider_id == pid, SettlementBatch.quarter == quarter)
                    .with_for_update()).one()
        if batch.status != SettlementStatus.PENDING:
            continue
        added = list(session.scalars(select(Redemption).where(
            Redemption.provider_id == pid, Redemption.period.in_(periods + late.get(pid, [])), *due)
            .order_by(Redemption.id).with_for_update()))
        for r in added:
            r.settlement_id = batch.id
        _total(session, batch)
        audit.append(session, AuditAction.SETTLEMENT_CREATED, "settlement", f"stl_{batch.id}",
                     after={"provider_id": pid, "quarter": quarter, "added": len(added),
                            "redemptions": batch.redemptions, "subsidy": batch.subsidy})
        batches.append(batch)
    return batches


def _total(session: Session, batch: SettlementBatch) -> None:
    rows = members(session, batch)
    batch.redemptions = len(rows)
    batch.amount = sum(r.amount or 0 for r in rows)
    batch.subsidy = sum(r.subsidy for r in rows)


def members(session: Session, batch: SettlementBatch) -> list[Redemption]:
    session.flush()
    return list(session.scalars(select(Redemption).where(Redemption.settlement_id == batch.id)
                                .order_by(Redemption.id)))


def approve(session: Session, policy: Policy, batch_id: int, actor: str | None = None) -> SettlementBatch:
    """Finance approves a pending batch: each of its redemptions still captured is settled — its
    hold posted to granted (`hold_post`) — and the batch's totals are what was settled.

    Locks (docs/ARCHITECTURE.md#lock-order): the batch; the balance rows of its enterprises,
    sorted; then its redemptions by id. No period row: a settlement spans three months and moves
    no period's reconciliation figures (holds become grants of the same amounts)."""
    batch = session.scalars(select(SettlementBatch).where(SettlementBatch.id == batch_id).with_for_update()
                            .execution_options(populate_existing=True)).first()
    if batch is None:
        raise Invalid("unknown_settlement", f"No settlement stl_{batch_id}", "id")
    if batch.status == SettlementStatus.APPROVED:
        return batch
    keys = {(u, y) for u, y in session.execute(select(Redemption.enterprise_uscc, Redemption.year)
                                                .where(Redemption.settlement_id == batch.id))}
    balances = ledger.lock_balances(session, policy, keys)
    rows = list(session.scalars(select(Redemption).where(Redemption.settlement_id == batch.id)
                                .order_by(Redemption.id).with_for_update()
                                .execution_options(populate_existing=True)))
    now = utcnow()
    for r in rows:
        if r.status != RedemptionStatus.CAPTURED:
            r.settlement_id = None  # rejected or flagged since: not paid in this batch
            continue
        ledger.transfer(session, "hold_post", balances[(r.enterprise_uscc, r.year)], r.held, claim_id=None,
                        policy_id=r.policy_id, reason=f"settlement stl_{batch.id} approved", redemption_id=r.id)
        r.held, r.status, r.settled_at = 0, RedemptionStatus.SETTLED, now
    if not any(r.status == RedemptionStatus.SETTLED for r in rows):
        raise Conflict("settlement_empty", "No redemption of the batch can be settled", "id")
    _total(session, batch)
    batch.status, batch.approved_at, batch.approved_by = SettlementStatus.APPROVED, now, actor
    audit.append(session, AuditAction.SETTLEMENT_APPROVED, "settlement", f"stl_{batch.id}",
                 after={"object": "settlement", "id": f"stl_{batch.id}", "provider_id": batch.provider_id,
                        "quarter": batch.quarter, "redemptions": batch.redemptions,
                        "amount": batch.amount, "subsidy": batch.subsidy})
    return batch


# --- the payment file ----------------------------------------------------------------------------

HEADER = (("结算批次", "Settlement"), ("服务商", "Provider"), ("核销编号", "Redemption"),
          ("业务参考号", "Reference"), ("统一社会信用代码", "USCC"), ("企业名称", "Enterprise"),
          ("所属期", "Period"), ("发票号码", "Invoice no."), ("核销金额（分）", "Amount (fen)"),
          ("补贴金额（分）", "Subsidy (fen)"), ("补贴金额（元）", "Subsidy (CNY)"))


def payment_rows(session: Session, batch: SettlementBatch) -> list[tuple[Any, ...]]:
    names = dict(session.execute(select(Enterprise.uscc, Enterprise.name)).all())
    return [(f"stl_{batch.id}", batch.provider_id, f"rdm_{r.id}", r.reference, r.enterprise_uscc,
             names.get(r.enterprise_uscc, ""), r.period, r.invoice_no or "", r.amount or 0, r.subsidy,
             yuan(r.subsidy)) for r in members(session, batch)]


def filename(batch: SettlementBatch, fmt: str) -> str:
    return f"settlement-{batch.provider_id}-{batch.quarter}.{fmt}"


def write_payment_file(session: Session, batch: SettlementBatch, fmt: str, out: IO[bytes] | str) -> dict[str, Any]:
    """The treasury's payment file of a batch: one row per redemption and a total row, money in
    integer fen (and yuan, exact); every text cell is data, never a formula. Returns the totals."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    rows = payment_rows(session, batch)
    provider = session.get(Provider, batch.provider_id)
    totals = {"redemptions": len(rows), "amount": sum(r[8] for r in rows), "subsidy": sum(r[9] for r in rows)}
    total_row = ("合计 Total", batch.provider_id, "", "", "", "", batch.quarter, "", totals["amount"],
                 totals["subsidy"], yuan(totals["subsidy"]))
    if fmt == "csv":
        assert not isinstance(out, str)
        text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="")
        w = csv.writer(text)
        w.writerow([en for _, en in HEADER])
        for row in (*rows, total_row):
            w.writerow(_csv_text(v) for v in row)
        text.flush()
        text.detach()
        return totals
    wb = Workbook(write_only=True)
    sh = _Sheet(wb, "结算 Settlement", (12, 14, 12, 18, 21, 30, 9, 23, 15, 15, 15))
    sh.append([sh.cell(f"算力券核销结算 {batch.quarter} — {provider.name if provider else batch.provider_id}",
                       font=BOLD)])
    sh.header([zh for zh, _ in HEADER], [en for _, en in HEADER])
    for row in rows:
        sh.append([*row[:10], sh.money(row[9])])
    sh.append([sh.cell(v, font=BOLD, fill=TOTAL_FILL) if isinstance(v, str) else v for v in total_row[:10]]
              + [sh.money(totals["subsidy"], font=BOLD, fill=TOTAL_FILL)])
    wb.save(out)
    return totals


def settled_since(session: Session, start: datetime, end: datetime, uscc: str | None = None) -> list[Redemption]:
    """Redemptions settled (their batch approved) in [start, end), of one enterprise or of all
    (one query): what the statements of the month show as subsidy settled with providers."""
    stmt = select(Redemption).where(Redemption.status == RedemptionStatus.SETTLED,
                                    Redemption.settled_at >= start, Redemption.settled_at < end)
    if uscc is not None:
        stmt = stmt.where(Redemption.enterprise_uscc == uscc)
    return list(session.scalars(stmt.order_by(Redemption.enterprise_uscc, Redemption.id)))


def previous_quarter(fire_time: datetime, timezone: str = "Asia/Shanghai") -> str:
    """The quarter before the one holding `fire_time` in `timezone`: the settlements job's key."""
    from zoneinfo import ZoneInfo

    local = fire_time.astimezone(ZoneInfo(timezone))
    q = (local.month - 1) // 3 + 1
    return f"{local.year - 1}Q4" if q == 1 else f"{local.year}Q{q - 1}"


def settlements_job(db, quarter: str, policy: Policy) -> dict[str, Any]:
    """The quarterly job's body: build every provider's batch of `quarter` (one per (provider,
    quarter) by the batch's unique key; the job run itself is claimed once per quarter)."""
    with db.session() as session, session.begin():
        batches = build(session, policy, quarter)
        return {"quarter": quarter, "batches": [
            {"id": f"stl_{b.id}", "provider_id": b.provider_id, "redemptions": b.redemptions,
             "subsidy": b.subsidy} for b in batches]}
