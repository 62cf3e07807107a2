"""Reading and voiding usage records. A record is never edited: voiding is its only change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.models import UsageRecord
from voucher.db import parse_row_id, utcnow


def record_json(r: UsageRecord) -> dict[str, Any]:
    return {
        "object": "usage_record",
        "id": f"ur_{r.id}",
        "record_id": r.record_id,
        "provider_id": r.provider_id,
        "enterprise_uscc": r.enterprise_uscc,
        "resource": r.resource,
        "unit": r.unit,
        "quantity": str(r.quantity),
        "started_at": r.started_at.isoformat().replace("+00:00", "Z"),
        "ended_at": r.ended_at.isoformat().replace("+00:00", "Z"),
        "period": r.period,
        "amount": r.amount,
        "currency": r.currency,
        "status": r.status,
        "metadata": r.metadata_ or {},
        "voided_at": r.voided_at.isoformat().replace("+00:00", "Z") if r.voided_at else None,
        "void_reason": r.void_reason,
        "created_at": r.created_at.isoformat().replace("+00:00", "Z"),
    }


def parse_public_id(value: str) -> int:
    return parse_row_id("ur_", value, "usage record")


def list_records(
    session: Session,
    *,
    provider_id: str | None = None,
    enterprise_uscc: str | None = None,
    period: str | None = None,
    status: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> tuple[list[UsageRecord], bool]:
    stmt = select(UsageRecord)
    if provider_id:
        stmt = stmt.where(UsageRecord.provider_id == provider_id)
    if enterprise_uscc:
        stmt = stmt.where(UsageRecord.enterprise_uscc == enterprise_uscc)
    if period:
        stmt = stmt.where(UsageRecord.period == period)
    if status:
        stmt = stmt.where(UsageRecord.status == status)
    if after_id is not None:
        stmt = stmt.where(UsageRecord.id > after_id)
    rows = list(session.scalars(stmt.order_by(UsageRecord.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_record(session: Session, provider_id: str, record_id: str, *, lock: bool = False) -> UsageRecord | None:
    stmt = select(UsageRecord).where(
        UsageRecord.provider_id == provider_id, UsageRecord.record_id == record_id
    )
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def void_record(session: Session, record: UsageRecord, reason: str | None) -> tuple[UsageRecord, bool]:
    """Void once; voiding again returns the record unchanged (idempotent). True if changed."""
    if record.status == "void":
        return record, False
    record.status = "void"
    record.voided_at = utcnow()
    record.void_reason = reason
    return record, True
