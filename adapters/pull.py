"""Hand what an adapter extracted to the same ingestion path as the push API.

Pull windows need no cursor table: each provider resumes from the latest `ended_at` it
already has, minus the adapter's overlap, and the stable record ids turn the overlap
into duplicates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from adapters.base import Extracted
from adapters.config import ProviderConfig, load_all
from adapters.registry import IMPORT_FORMATS, PULL_TYPES, make_adapter, parse_file
from kernel import metrics
from kernel.db import Database
from metering.batches import record_batch
from metering.ingest import ingest_records
from metering.models import Provider, UsageRecord

BATCH = 1000
FORMATS = IMPORT_FORMATS  # the names this module always offered, read from the registry


@dataclass
class IngestSummary:
    provider_id: str
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_by_code: Counter = field(default_factory=Counter)
    skipped_by_reason: Counter = field(default_factory=Counter)
    unmapped_tenants: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # bad rows and rejections, with where

    def as_dict(self) -> dict[str, Any]:
        return {"provider_id": self.provider_id, "records": self.records, "accepted": self.accepted,
                "duplicates": self.duplicates, "rejected": self.rejected,
                "rejected_by_code": dict(self.rejected_by_code),
                "skipped_by_reason": dict(self.skipped_by_reason),
                "unmapped_tenants": sorted(self.unmapped_tenants)}

    def lines(self) -> list[str]:
        out = [f"{self.provider_id}: {self.records} records — accepted {self.accepted}, "
               f"duplicates {self.duplicates}, rejected {self.rejected}"]
        for code, n in sorted(self.rejected_by_code.items()):
            out.append(f"  rejected {code}: {n}")
        for reason, n in sorted(self.skipped_by_reason.items()):
            out.append(f"  skipped {reason}: {n}")
        if self.unmapped_tenants:
            out.append(f"  unmapped tenants: {', '.join(sorted(self.unmapped_tenants))}")
        return out


def ingest_extracted(db: Database, provider_id: str, extracted: Extracted,
                     progress: Callable[[int], None] | None = None, *, source: str = "import",
                     label: str | None = None, require_contracts: bool = False) -> IngestSummary:
    """Ingest in batches of 1,000, each its own transaction (a failed batch leaves nothing).

    `require_contracts` is the policy's (docs/POLICY.md#risk): callers pass it so an import, a
    pull and an upload reject uncovered records `no_contract` exactly as the push does."""
    summary = IngestSummary(provider_id)
    summary.skipped_by_reason.update(extracted.skipped_by_reason())
    summary.unmapped_tenants |= extracted.unmapped_tenants()
    for s in extracted.skipped:
        if s.reason == "bad_row":
            summary.problems.append(f"line {s.line}: {s.detail}")
    records = extracted.records
    for start in range(0, len(records), BATCH):
        chunk = records[start:start + BATCH]
        started = time.perf_counter()
        with db.session() as session, session.begin():
            result = ingest_records(session, provider_id, chunk, require_contracts=require_contracts)
            record_batch(session, provider_id, source, result, label)
        metrics.record_batch(provider_id, result, time.perf_counter() - started, source=source)
        summary.records += len(chunk)
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        summary.rejected += result.rejected
        summary.rejected_by_code.update(result.rejected_by_code)
        for r in result.results:
            if r["status"] == "rejected":
                summary.problems.append(f"{r['record_id']}: {r['error']['code']} ({r['error']['param']})")
        if progress:
            progress(len(chunk))
    return summary


def check_provider(db: Database, provider_id: str) -> None:
    with db.session() as s:
        if s.get(Provider, provider_id) is None:
            raise LookupError(f"provider {provider_id!r} is not registered")


def import_file(db: Database, provider_id: str, fmt: str, path: Path, config: ProviderConfig,
                progress: Callable[[int], None] | None = None, *,
                require_contracts: bool = False) -> IngestSummary:
    check_provider(db, provider_id)
    text = Path(path).read_text(encoding="utf-8-sig")
    return ingest_extracted(db, provider_id, parse_file(fmt, text, config), progress,
                            require_contracts=require_contracts)


def last_ended(db: Database, provider_id: str) -> datetime | None:
    with db.session() as s:
        value = s.scalar(select(func.max(UsageRecord.ended_at)).where(UsageRecord.provider_id == provider_id))
    return value


def pull_provider(db: Database, config: ProviderConfig, now: datetime | None = None, *,
                  progress: Callable[[int], None] | None = None,
                  on_extracted: Callable[[int], None] | None = None,
                  require_contracts: bool = False) -> IngestSummary:
    """One pull of one provider: resume from its latest record minus the overlap.

    `on_extracted(n)` is told how many records the adapter extracted, before any is
    ingested (to size a progress bar); `progress(k)` after each batch of k, as in
    ingest_extracted.
    """
    now = now or datetime.now(UTC)
    check_provider(db, config.provider_id)
    overlap = timedelta(seconds=int(config.settings.get("overlap_seconds", 86400)))
    first = timedelta(seconds=int(config.settings.get("first_pull_seconds", 7 * 86400)))
    last = last_ended(db, config.provider_id)
    start = (last - overlap) if last else now - first
    try:
        extracted = make_adapter(config).extract(start, now)
        if on_extracted is not None:
            on_extracted(len(extracted.records))
        summary = ingest_extracted(db, config.provider_id, extracted, progress, source="pull",
                                   require_contracts=require_contracts)
    except Exception:
        metrics.record_adapter_pull(config.provider_id, "failed")
        raise
    metrics.record_adapter_pull(config.provider_id, "succeeded")
    return summary


def pullable(configs: dict[str, ProviderConfig], provider_id: str | None = None) -> Iterable[ProviderConfig]:
    for pid, cfg in sorted(configs.items()):
        if provider_id and pid != provider_id:
            continue
        if cfg.type in PULL_TYPES:
            yield cfg


def pull_job(db: Database, period: str, providers_dir: Path, require_contracts: bool = False) -> dict[str, Any]:
    """The pull job (wired by voucher.scheduler with `Settings.providers_dir`): every provider
    with a pull adapter; one failing does not stop the rest."""
    configs = load_all(providers_dir)
    results, errors = {}, {}
    for cfg in pullable(configs):
        try:
            results[cfg.provider_id] = pull_provider(db, cfg, require_contracts=require_contracts).as_dict()
        except Exception as exc:  # reported per provider; the job fails if any provider failed
            errors[cfg.provider_id] = f"{type(exc).__name__}: {exc}"
    if errors:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    return results
