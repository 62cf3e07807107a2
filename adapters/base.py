"""The adapter interface: every source yields records in the push API's schema.

Adapters never write to the database themselves; `adapters.pull` hands what they
yield to `metering.ingest.ingest_records`, the same path as `POST /v1/usage-records`,
so validation, idempotency and per-record errors are identical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass
class Skipped:
    """A source row that produced no record, and why (counted, never silently dropped)."""

    reason: str  # "unmapped_tenant", "not_ended", "step_row", "bad_row", ...
    detail: str = ""
    line: int | None = None
    tenant: str | None = None


@dataclass
class Extracted:
    """What one pass over a source produced."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_by_reason(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    def unmapped_tenants(self) -> set[str]:
        return {s.tenant for s in self.skipped if s.reason == "unmapped_tenant" and s.tenant}


class Adapter(Protocol):
    """A pull source. `window` is [start, end) in UTC; adapters overlap windows on purpose."""

    def extract(self, start: datetime, end: datetime) -> Extracted: ...


RecordStream = Iterator[dict[str, Any] | Skipped]
