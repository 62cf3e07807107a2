"""Batch ingestion: one transaction, set-based SQL, one result per record in input order.

Per batch, whatever its size: one SELECT for the enterprises named, one multi-row
INSERT … ON CONFLICT DO NOTHING RETURNING, and one SELECT for the record ids that
already existed (to tell a replay from a conflict). No query per record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from metering.models import Enterprise, UsageRecord
from metering.records import (
    RecordError,
    UsageRecordIn,
    content_hash,
    record_period,
    validate_record,
)

IN_CHUNK = 900  # keeps `IN (...)` lists under SQLite's variable limit


@dataclass
class BatchResult:
    results: list[dict[str, Any]]
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_code: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "usage_batch",
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "results": self.results,
        }


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(UsageRecord)
    if dialect == "sqlite":
        return sqlite.insert(UsageRecord)
    raise RuntimeError(f"unsupported database {dialect}")


def ingest_records(
    session: Session,
    provider_id: str,
    raw_records: Sequence[Any],
    *,
    now: datetime | None = None,
    future_skew: timedelta = timedelta(minutes=5),
    param_prefix: str = "records",
) -> BatchResult:
    """Validate and store a batch for one provider. The caller owns the transaction."""
    now = now or datetime.now(UTC)
    n = len(raw_records)
    results: list[dict[str, Any] | None] = [None] * n
    outcome = BatchResult(results=[])

    def reject(i: int, err: RecordError) -> None:
        rid = raw_records[i].get("record_id") if isinstance(raw_records[i], dict) else None
        results[i] = {"record_id": rid if isinstance(rid, str) else None, "status": "rejected",
                      "error": err.as_dict()}

    valid: list[tuple[int, UsageRecordIn]] = []
    for i, raw in enumerate(raw_records):
        checked = validate_record(raw, f"{param_prefix}[{i}]", now, future_skew)
        if isinstance(checked, RecordError):
            reject(i, checked)
        else:
            valid.append((i, checked))

    usccs = sorted({rec.enterprise_uscc for _, rec in valid})
    known: set[str] = set()
    for chunk in _chunks(usccs, IN_CHUNK):
        known.update(session.scalars(select(Enterprise.uscc).where(Enterprise.uscc.in_(chunk))))

    # First occurrence of each record_id in the batch is the one offered to the database;
    # later ones are judged against it (same content: duplicate, else conflict).
    first_seen: dict[str, tuple[int, str]] = {}
    repeats: list[tuple[int, str, str]] = []
    rows: list[dict[str, Any]] = []
    for i, rec in valid:
        if rec.enterprise_uscc not in known:
            reject(i, RecordError("unknown_enterprise",
                                  f"enterprise {rec.enterprise_uscc} is not registered in the programme",
                                  f"{param_prefix}[{i}].enterprise_uscc"))
            continue
        digest = content_hash(rec)
        if rec.record_id in first_seen:
            repeats.append((i, rec.record_id, digest))
            continue
        first_seen[rec.record_id] = (i, digest)
        rows.append({
            "provider_id": provider_id,
            "record_id": rec.record_id,
            "enterprise_uscc": rec.enterprise_uscc,
            "resource": rec.resource,
            "unit": rec.unit,
            "quantity": rec.quantity,
            "started_at": rec.started_at,
            "ended_at": rec.ended_at,
            "period": record_period(rec),
            "amount": rec.amount,
            "currency": rec.currency,
            "metadata_": rec.metadata,
            "content_hash": digest,
            "status": "active",
            "created_at": now,
        })

    inserted: set[str] = set()
    if rows:
        stmt = (
            _insert(session)
            .on_conflict_do_nothing(index_elements=["provider_id", "record_id"])
            .returning(UsageRecord.record_id)
        )
        inserted = set(session.scalars(stmt, rows))

    existing: dict[str, str] = {}
    missing = [rid for rid in first_seen if rid not in inserted]
    for chunk in _chunks(missing, IN_CHUNK):
        existing.update(
            session.execute(
                select(UsageRecord.record_id, UsageRecord.content_hash).where(
                    UsageRecord.provider_id == provider_id, UsageRecord.record_id.in_(chunk)
                )
            ).tuples().all()
        )

    def judge(i: int, rid: str, digest: str, stored: str | None) -> None:
        if stored == digest:
            results[i] = {"record_id": rid, "status": "duplicate"}
        else:
            reject(i, RecordError("conflict",
                                  f"record_id {rid!r} was already stored with different content; "
                                  "records are never overwritten (void it and push a new id)",
                                  f"{param_prefix}[{i}].record_id"))

    for rid, (i, digest) in first_seen.items():
        if rid in inserted:
            results[i] = {"record_id": rid, "status": "accepted"}
        else:
            judge(i, rid, digest, existing.get(rid))
    for i, rid, digest in repeats:
        judge(i, rid, digest, first_seen[rid][1] if rid in inserted else existing.get(rid))

    for r in results:
        assert r is not None
        status = r["status"]
        if status == "accepted":
            outcome.accepted += 1
        elif status == "duplicate":
            outcome.duplicates += 1
        else:
            outcome.rejected += 1
            outcome.rejected_by_code[r["error"]["code"]] += 1
    outcome.results = results  # type: ignore[assignment]
    return outcome
