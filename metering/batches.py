"""The ingestion log: one row per ingested batch, written in the batch's own transaction.

Providers see their recent results (accepted / duplicates / rejected by code) in the console;
the row commits or rolls back with the records it describes, so the log never disagrees
with the usage table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base, BigId, UTCDateTime, utcnow

SOURCES = ("api", "import", "pull", "console")


class IngestBatch(Base):
    __tablename__ = "ingest_batch"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # No foreign key: a provider key may push for a provider id that is not registered, and the
    # batch (all rejected) must still be logged rather than fail.
    provider_id: Mapped[str] = mapped_column(String(63))
    source: Mapped[str] = mapped_column(String(16))  # api | import | pull | console
    label: Mapped[str | None] = mapped_column(String(200))  # e.g. the uploaded file's name
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    records: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    rejected_by_code: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_ingest_batch_provider_received", "provider_id", "received_at"),)


def record_batch(session: Session, provider_id: str, source: str, result: Any,
                 label: str | None = None) -> IngestBatch:
    """Log a BatchResult inside the caller's transaction (the one that stored the records)."""
    if source not in SOURCES:
        raise ValueError(f"unknown ingestion source {source!r}")
    by_code = {str(k): int(v) for k, v in sorted(dict(result.rejected_by_code).items())}
    row = IngestBatch(provider_id=provider_id, source=source, label=label[:200] if label else None,
                      records=result.accepted + result.duplicates + result.rejected,
                      accepted=result.accepted, duplicates=result.duplicates,
                      rejected=result.rejected, rejected_by_code=by_code)
    session.add(row)
    return row


def recent_batches(session: Session, provider_id: str, limit: int = 20) -> list[IngestBatch]:
    """The provider's latest batches, newest first."""
    return list(session.scalars(
        select(IngestBatch).where(IngestBatch.provider_id == provider_id)
        .order_by(IngestBatch.received_at.desc(), IngestBatch.id.desc()).limit(limit)))
