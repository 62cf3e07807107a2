"""Batch ingestion: one transaction, set-based SQL, one result per record in input order.

Per batch, whatever its size: one SELECT for the enterprises named, one for the closed periods
among the records' (docs/API.md#period-close), one bulk load of the
new rows into a session-local staging table (PostgreSQL: COPY; SQLite: executemany), one
INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING from it, and one SELECT for the record
ids that already existed (to tell a replay from a conflict). No query per record.

The staging table replaced a 1,000-row VALUES list with 15,000 placeholders, which psycopg
re-parsed in Python on every batch (half the server's time per push; docs/BENCHMARKS.md).
Values are converted as the column types convert them, so both databases store exactly the
rows the ORM would write.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from kernel.billing_periods import closed_among
from kernel.db import MicroDecimal
from metering.contracts import confirmed_intervals, covered
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
    """What a push did; the API answers it as `api.schemas.usage.UsageBatch`."""

    results: list[dict[str, Any]]
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_code: Counter = field(default_factory=Counter)


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# PostgreSQL staging: a temporary table per database session, emptied by the statement
# that reads it (so two batches in one transaction never mix) and again at commit.
_STAGE_COLUMNS = (
    ("record_id", "text"), ("enterprise_uscc", "text"), ("resource", "text"), ("unit", "text"),
    ("quantity", "bigint"), ("started_at", "timestamptz"), ("ended_at", "timestamptz"),
    ("period", "text"), ("amount", "bigint"), ("currency", "text"), ("metadata", "text"),
    ("content_hash", "text"),
)
_STAGE_NAMES = ", ".join(name for name, _ in _STAGE_COLUMNS)
_PG_STAGE = text(
    "CREATE TEMPORARY TABLE IF NOT EXISTS usage_record_stage ("
    + ", ".join(f"{name} {kind}" for name, kind in _STAGE_COLUMNS) + ") ON COMMIT DELETE ROWS"
)
_PG_COPY = f"COPY usage_record_stage ({_STAGE_NAMES}) FROM STDIN"
_PG_MOVE = text(
    "WITH staged AS (DELETE FROM usage_record_stage RETURNING *) "
    f"INSERT INTO usage_record (provider_id, status, created_at, {_STAGE_NAMES}) "
    "SELECT :provider_id, 'active', :created_at, "
    + ", ".join(f"{name}::json" if name == "metadata" else name for name, _ in _STAGE_COLUMNS)
    + " FROM staged ON CONFLICT (provider_id, record_id) DO NOTHING RETURNING record_id"
)


# SQLite staging: the same with a TEMP table, emptied after each batch. `WHERE true` lets
# SQLite parse an ON CONFLICT clause after a SELECT.
_SQLITE_STAGE = f"CREATE TEMP TABLE IF NOT EXISTS usage_record_stage ({_STAGE_NAMES})"
_SQLITE_FILL = (f"INSERT INTO temp.usage_record_stage ({_STAGE_NAMES}) "
                f"VALUES ({', '.join('?' for _ in _STAGE_COLUMNS)})")
_SQLITE_MOVE = (
    f"INSERT INTO main.usage_record (provider_id, status, created_at, {_STAGE_NAMES}) "
    f"SELECT ?, 'active', ?, {_STAGE_NAMES} FROM temp.usage_record_stage WHERE true "
    "ON CONFLICT (provider_id, record_id) DO NOTHING RETURNING record_id"
)


def _insert_rows(session: Session, provider_id: str, fresh: list[tuple[UsageRecordIn, str, str]],
                 now: datetime) -> set[str]:
    """Insert what is new; the record ids actually inserted (conflicts are skipped)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(_PG_STAGE)
        scale = MicroDecimal.SCALE
        dbapi = session.connection().connection.dbapi_connection
        with dbapi.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
            for rec, digest, period in fresh:
                # What MicroDecimal and JSON would bind: integer millionths, the same JSON text.
                copy.write_row((rec.record_id, rec.enterprise_uscc, rec.resource, rec.unit,
                                int(rec.quantity * scale), rec.started_at, rec.ended_at,
                                period, rec.amount, rec.currency,
                                json.dumps(rec.metadata), digest))
        return set(session.scalars(_PG_MOVE, {"provider_id": provider_id, "created_at": now}))
    if dialect == "sqlite":
        conn = session.connection()
        columns, dialect_ = UsageRecord.__table__.c, conn.dialect

        def converter(column: str):
            # The column type's own converter, so the rows are exactly what the ORM writes.
            return columns[column].type.dialect_impl(dialect_).bind_processor(dialect_)

        when, micros, as_json = converter("started_at"), converter("quantity"), converter("metadata")
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(_SQLITE_STAGE)
            cursor.executemany(_SQLITE_FILL, [
                (rec.record_id, rec.enterprise_uscc, rec.resource, rec.unit, micros(rec.quantity),
                 when(rec.started_at), when(rec.ended_at), period, rec.amount,
                 rec.currency, as_json(rec.metadata), digest)
                for rec, digest, period in fresh
            ])
            cursor.execute(_SQLITE_MOVE, (provider_id, when(now)))
            inserted = {rid for (rid,) in cursor.fetchall()}
            cursor.execute("DELETE FROM temp.usage_record_stage")
        finally:
            cursor.close()
        return inserted
    raise RuntimeError(f"unsupported database {dialect}")


def ingest_records(
    session: Session,
    provider_id: str,
    raw_records: Sequence[Any],
    *,
    now: datetime | None = None,
    future_skew: timedelta = timedelta(minutes=5),
    param_prefix: str = "records",
    require_contracts: bool = False,
) -> BatchResult:
    """Validate and store a batch for one provider. The caller owns the transaction.

    `require_contracts` (policy, docs/API.md#risk): a record whose `ended_at` no confirmed
    contract between the provider and its enterprise covers is rejected `no_contract` — one
    query for the batch's contracts, checked in memory.
    """
    now = now or datetime.now(UTC)
    n = len(raw_records)
    results: list[dict[str, Any] | None] = [None] * n
    outcome = BatchResult(results=[])

    def reject(i: int, err: RecordError) -> None:
        rid = raw_records[i].get("record_id") if isinstance(raw_records[i], dict) else None
        results[i] = {"record_id": rid if isinstance(rid, str) else None, "status": "rejected",
                      "error": err.as_dict()}

    valid: list[tuple[int, UsageRecordIn, str]] = []  # with its period, computed once
    for i, raw in enumerate(raw_records):
        checked = validate_record(raw, f"{param_prefix}[{i}]", now, future_skew)
        if isinstance(checked, RecordError):
            reject(i, checked)
        else:
            valid.append((i, checked, record_period(checked)))

    usccs = sorted({rec.enterprise_uscc for _, rec, _ in valid})
    known: set[str] = set()
    for chunk in _chunks(usccs, IN_CHUNK):
        known.update(session.scalars(select(Enterprise.uscc).where(Enterprise.uscc.in_(chunk))))

    # One lookup for the whole batch (docs/API.md#period-close): a closed period's figures are
    # final, so its new records are refused; a replay of a stored one is still a duplicate.
    closed = closed_among(session, {period for _, _, period in valid})
    contracts = confirmed_intervals(session, provider_id, known) if require_contracts else None

    # First occurrence of each record_id in the batch is the one offered to the database;
    # later ones are judged against it (same content: duplicate, else conflict).
    first_seen: dict[str, tuple[int, str]] = {}
    repeats: list[tuple[int, str, str]] = []
    fresh: list[tuple[UsageRecordIn, str, str]] = []
    refused: dict[str, str] = {}  # record_id -> its closed period: not offered to the database
    for i, rec, period in valid:
        if rec.enterprise_uscc not in known:
            reject(i, RecordError("unknown_enterprise",
                                  f"enterprise {rec.enterprise_uscc} is not registered in the programme",
                                  f"{param_prefix}[{i}].enterprise_uscc"))
            continue
        if contracts is not None and not covered(contracts.get(rec.enterprise_uscc, []), rec.ended_at):
            reject(i, RecordError("no_contract",
                                  f"no confirmed contract between {provider_id} and {rec.enterprise_uscc} "
                                  f"covers {rec.ended_at.isoformat()}", f"{param_prefix}[{i}].ended_at"))
            continue
        digest = content_hash(rec)
        if rec.record_id in first_seen:
            repeats.append((i, rec.record_id, digest))
            continue
        first_seen[rec.record_id] = (i, digest)
        if period in closed:
            refused[rec.record_id] = period
            continue
        fresh.append((rec, digest, period))

    inserted = _insert_rows(session, provider_id, fresh, now) if fresh else set()

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
        elif stored is None and rid in refused:
            reject(i, RecordError("period_closed",
                                  f"period {refused[rid]} is closed: its figures are final",
                                  f"{param_prefix}[{i}].ended_at"))
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
