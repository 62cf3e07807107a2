"""Reading and voiding usage records. A record is never edited: voiding is its only change."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kernel.billing_periods import refuse_if_closed
from kernel.db import keyset_page, parse_row_id, utcnow, where_given
from kernel.vocabulary import UsageStatus
from metering.models import UsageRecord


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
    stmt = where_given(select(UsageRecord), (UsageRecord.provider_id, provider_id),
                       (UsageRecord.enterprise_uscc, enterprise_uscc),
                       (UsageRecord.period, period), (UsageRecord.status, status))
    return keyset_page(session, stmt, UsageRecord.id, limit, after_id)


def get_record(session: Session, provider_id: str, record_id: str, *, lock: bool = False) -> UsageRecord | None:
    stmt = select(UsageRecord).where(
        UsageRecord.provider_id == provider_id, UsageRecord.record_id == record_id
    )
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def void_record(session: Session, record: UsageRecord, reason: str | None) -> tuple[UsageRecord, bool]:
    """Void once; voiding again returns the record unchanged (idempotent). True if changed."""
    if record.status == UsageStatus.VOID:
        return record, False
    # A closed period's figures are final (docs/API.md#period-close); the shared lock makes a
    # close of the period wait for this void, and this void wait for a run of the period.
    refuse_if_closed(session, record.period, None)
    record.status = UsageStatus.VOID.value
    record.voided_at = utcnow()
    record.void_reason = reason
    return record, True
