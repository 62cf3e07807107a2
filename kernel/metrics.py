"""The Prometheus series that the domain and the job runner count, wherever they run.

Defined here, at the bottom, so that the code that does the work (the ingest path of the
pull adapters and imports, the job runner) counts it without importing the HTTP edge; the
`/metrics` endpoint, the HTTP series and the figures read from the database at scrape time
are `api.metrics`, which exports these too. Labels are bounded sets (`label`, `error_code`).
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Histogram

from kernel.vocabulary import Event

_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")

# --- Metering -------------------------------------------------------------------------------
USAGE_RECORDS = Counter(
    "voucher_usage_records_total",
    "Usage records received, by provider and outcome (accepted, duplicate, rejected); "
    "code is the rejection code, empty otherwise",
    ["provider", "outcome", "code"])
USAGE_VOIDED = Counter(
    "voucher_usage_records_voided_total", "Usage records voided, by provider", ["provider"])
INGEST_BATCHES = Counter(
    "voucher_ingest_batches_total", "Batches ingested, by source (push, pull, import)", ["source"])
INGEST_BATCH_DURATION = Histogram(
    "voucher_ingest_batch_duration_seconds",
    "Time from receiving a batch to its records being durable, by source",
    ["source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
INGEST_BATCH_RECORDS = Histogram(
    "voucher_ingest_batch_records", "Records per ingested batch, by source", ["source"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000))

# --- Jobs and adapters (counted by the process that runs them) ----------------------------
JOB_RUNS = Counter(
    "voucher_job_runs_total", "Scheduled job runs, by job and outcome (succeeded, failed, skipped)",
    ["job", "outcome"])
JOB_DURATION = Histogram(
    "voucher_job_duration_seconds", "Duration of job runs, by job", ["job"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600))
ADAPTER_PULLS = Counter(
    "voucher_adapter_pulls_total", "Adapter pulls from providers, by provider and outcome",
    ["provider", "outcome"])


def label(value: Any, default: str = "unknown", limit: int = 64) -> str:
    if value is None or value == "":
        return default
    return str(value)[:limit]


def error_code(value: Any) -> str:
    """Error codes are a closed vocabulary; anything else is folded into `other`."""
    text = str(value or "")
    return text if _CODE.fullmatch(text) else "other"


# --- Functions the domain code calls --------------------------------------------------------
def record_batch(provider_id: str, result: Any, seconds: float | None = None,
                 source: str = "push") -> None:
    """Count one ingested batch (a `metering.ingest.BatchResult`): per-record outcomes and latency.

    The push API is counted through the `batch_ingested` event; adapters and imports that
    ingest without the app call this after their commit, with source="pull" or "import".
    """
    provider = label(provider_id)
    if result.accepted:
        USAGE_RECORDS.labels(provider, "accepted", "").inc(result.accepted)
    if result.duplicates:
        USAGE_RECORDS.labels(provider, "duplicate", "").inc(result.duplicates)
    by_code = Tally()
    for code, n in dict(result.rejected_by_code).items():
        by_code[error_code(code)] += n
    for code, n in by_code.items():
        USAGE_RECORDS.labels(provider, "rejected", code).inc(n)
    source = label(source)
    INGEST_BATCHES.labels(source).inc()
    INGEST_BATCH_RECORDS.labels(source).observe(result.accepted + result.duplicates + result.rejected)
    if seconds is not None:
        INGEST_BATCH_DURATION.labels(source).observe(seconds)


def record_void(provider_id: str) -> None:
    USAGE_VOIDED.labels(label(provider_id)).inc()


def record_job_run(job: str, outcome: str, duration: float | None = None) -> None:
    """One run this process finished; outcome is succeeded, failed or skipped (claimed elsewhere).

    The last success per job is not kept here but read from `job_run` at scrape time, so it
    survives restarts and counts every scheduler replica.
    """
    job = label(job)
    JOB_RUNS.labels(job, error_code(outcome)).inc()
    if duration is not None:
        JOB_DURATION.labels(job).observe(duration)


_jobs_hooked = False


def hook_jobs() -> None:
    """Count the runs this process executes (`kernel.jobruns` "job_finished"); idempotent."""
    global _jobs_hooked
    if _jobs_hooked:
        return
    from kernel.jobruns import events as job_events

    job_events.on(Event.JOB_FINISHED, lambda job, status, duration: record_job_run(
        job, status, duration=duration))
    _jobs_hooked = True


def record_adapter_pull(provider: str, outcome: str) -> None:
    """One pull of one provider; outcome is succeeded or failed (or another short code)."""
    ADAPTER_PULLS.labels(label(provider), error_code(outcome)).inc()
