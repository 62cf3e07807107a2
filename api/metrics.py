"""Prometheus metrics: every `voucher_*` series the service exports, and `/metrics`.

Under gunicorn the workers share nothing, so prometheus-client runs in multiprocess
mode: `PROMETHEUS_MULTIPROC_DIR` is set before any worker imports this module (by
`voucher serve` and `config/gunicorn.conf.py`), gunicorn empties it at start and calls
`mark_process_dead` when a worker exits, and `/metrics` sums the workers' files.
Without the variable (tests, CLI, the scheduler) the default registry is used.

Where the numbers come from:
- request hooks (`init_metrics`) count every HTTP request by route template;
- events on the app's Events hub (`batch_ingested`, `record_voided`) count usage records,
  and `kernel.jobruns` "job_finished" events count the job runs of this process;
- `record_batch` / `record_adapter_pull` for adapters that ingest outside the app (defined
  with their series in `kernel.metrics`, so the lower layers count without importing this);
- the database, read when Prometheus scrapes (`ScrapeCollector`, one aggregate query per
  source): enterprises near their cap, reconciliation state and discrepancies, job run state
  on `/metrics`; subsidy reserved/released/granted/clawed back by county (sums of the
  append-only ledger, so true counters) on `/metrics/finance` only. These are right after
  restarts, whichever process (API, scheduler, CLI) did the work, and the same on every
  replica (so dashboards take max() across instances, not sum()).

Two endpoints (issue 15): `/metrics` is unauthenticated and carries operational series only;
money is on `/metrics/finance`, which needs a finance key like the rest of the finance API
(a county with one enterprise would otherwise publish that enterprise's subsidy).

Labels are bounded sets: route templates, methods, status codes, provider ids, error codes,
job names, years, periods, and on the finance endpoint the programme's counties (`COUNTIES`:
a county typed into the registry that is not one of them is counted as `other`, so no free
text reaches a label). Never a USCC, record id or key.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kernel.metrics import (  # noqa: F401  (re-exported: every voucher_* series is named here)
    ADAPTER_PULLS,
    INGEST_BATCH_DURATION,
    INGEST_BATCH_RECORDS,
    INGEST_BATCHES,
    JOB_DURATION,
    JOB_RUNS,
    USAGE_RECORDS,
    USAGE_VOIDED,
    hook_jobs,
    record_adapter_pull,
    record_batch,
    record_job_run,
    record_void,
)
from kernel.metrics import error_code as _code
from kernel.metrics import label as _label
from kernel.vocabulary import Event
from metering.models import Enterprise

log = logging.getLogger("voucher.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- HTTP -----------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "voucher_http_requests_total", "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "voucher_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# Names of the series computed at scrape time (ScrapeCollector), for dashboards and tests.
SUBSIDY_RESERVED = "voucher_subsidy_reserved_fen_total"
SUBSIDY_RELEASED = "voucher_subsidy_released_fen_total"
SUBSIDY_GRANTED = "voucher_subsidy_granted_fen_total"
SUBSIDY_CLAWED_BACK = "voucher_subsidy_clawed_back_fen_total"
DISCREPANCIES = "voucher_reconciliation_discrepancies"
ENTERPRISES_NEAR_CAP = "voucher_enterprises_near_cap"
RECONCILIATION_PREVIOUS_RUNS = "voucher_reconciliation_previous_period_runs"
RECONCILIATION_LAST_RUN = "voucher_reconciliation_last_run_timestamp_seconds"
JOB_LAST_SUCCESS = "voucher_job_last_success_timestamp_seconds"
JOB_LAST_FAILURE = "voucher_job_last_failure_timestamp_seconds"
JOB_RUNS_BY_STATUS = "voucher_job_runs_by_status"
SCRAPE_SOURCE_UP = "voucher_scrape_source_up"


def _ts(moment: datetime | float | None) -> float:
    if moment is None:
        return time.time()
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return float(moment)


# --- Figures read from the database at scrape time ------------------------------------------
Sample = tuple[tuple[str, ...], float]
Source = Callable[[Any], Any]  # session -> [Sample] (one family) or {family name: [Sample]}


@dataclass(frozen=True)
class Family:
    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()
    kind: str = "gauge"  # or "counter": a total that never decreases (append-only tables)

    def build(self):
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        return GaugeMetricFamily(self.name, self.documentation, labels=list(self.labelnames))


class ScrapeCollector:
    """Families computed from the database when Prometheus scrapes.

    A source is one function of a session, one aggregate query, feeding one or more families.
    A failing source (a missing table, a database that is down) is reported as
    `voucher_scrape_source_up{source} 0`, logged once, and never breaks the scrape.
    """

    def __init__(self, database: Any) -> None:
        self.database = database
        self.sources: dict[str, tuple[tuple[Family, ...], Source]] = {}
        self._failing: set[str] = set()

    def register_group(self, source: str, families: Iterable[Family], fn: Source) -> None:
        families = tuple(families)
        for family in families:
            if not family.name.startswith("voucher_"):
                raise ValueError(f"metric names start with voucher_: {family.name}")
        self.sources[source] = (families, fn)

    def register(self, name: str, documentation: str, labelnames: Iterable[str], fn: Source,
                 kind: str = "gauge") -> None:
        """One family from one source named like it; replaces an earlier one of that name."""
        self.register_group(name, [Family(name, documentation, tuple(labelnames), kind)], fn)

    def names(self) -> set[str]:
        return {f.name for families, _ in self.sources.values() for f in families}

    def collect(self):
        up = GaugeMetricFamily(SCRAPE_SOURCE_UP, "Whether each scrape-time database source answered",
                               labels=["source"])
        out = []
        for source, (families, fn) in list(self.sources.items()):
            try:
                with self.database.session() as session:
                    result = fn(session)
                    by_name = result if isinstance(result, Mapping) else {families[0].name: result}
                    built = []
                    for family in families:
                        metric = family.build()
                        for values, value in by_name.get(family.name, ()):
                            metric.add_metric([_label(v) for v in values], float(value))
                        built.append(metric)
            except Exception as exc:  # a missing table or a down database must not break /metrics
                if source not in self._failing:
                    log.warning("scrape source %s failed: %s: %s", source, type(exc).__name__, exc)
                self._failing.add(source)
                up.add_metric([source], 0)
                continue
            self._failing.discard(source)
            up.add_metric([source], 1)
            out.extend(built)
        yield from out
        yield up


# The programme's county-level divisions (Jiaxing): the only values of the `county` label.
COUNTIES = frozenset({"南湖区", "秀洲区", "嘉善县", "平湖市", "海盐县", "海宁市", "桐乡市"})


def county_label(county: Any) -> str:
    return county if county in COUNTIES else "other"


SUBSIDY_KINDS = {"reserve": SUBSIDY_RESERVED, "release": SUBSIDY_RELEASED, "grant": SUBSIDY_GRANTED,
                 "clawback": SUBSIDY_CLAWED_BACK}


def subsidy_by_county(session: Any) -> dict[str, list[Sample]]:
    """Fen moved by each kind of ledger transfer, by the enterprise's county.

    Postings are append-only and every transfer has one positive leg, so these sums only grow:
    they are counters, exact whichever process posted them.
    """
    from sqlalchemy import func, select

    from billing.models import LedgerPosting as P

    stmt = (select(Enterprise.county, P.kind, func.sum(P.amount))
            .join(Enterprise, Enterprise.uscc == P.enterprise_uscc)
            .where(P.amount > 0, P.kind.in_(list(SUBSIDY_KINDS)))
            .group_by(Enterprise.county, P.kind))
    sums: dict[tuple[str, str], int] = Tally()
    for county, kind, fen in session.execute(stmt):
        sums[(SUBSIDY_KINDS[kind], county_label(county))] += int(fen or 0)
    out: dict[str, list[Sample]] = {name: [] for name in SUBSIDY_KINDS.values()}
    for (name, county), fen in sorted(sums.items()):
        out[name].append(((county,), fen))
    return out


def quota_near_cap(session: Any) -> list[Sample]:
    """Enterprises whose reserved + granted is at least 90 % of the year's cap, by year."""
    from sqlalchemy import func, select

    from billing.models import QuotaBalance as Q

    stmt = (select(Q.year, func.count())
            .where(Q.cap > 0, (Q.reserved + Q.granted) * 10 >= Q.cap * 9)
            .group_by(Q.year))
    return [((str(year),), n) for year, n in session.execute(stmt)]


def previous_period_reconciliation_runs(session: Any) -> list[Sample]:
    """How many times last month (Asia/Shanghai) has been reconciled; 0 until it has."""
    from sqlalchemy import select

    from billing.models import Reconciliation
    from kernel.periods import previous_period

    period = previous_period(datetime.now(UTC))
    runs = session.scalar(select(Reconciliation.runs).where(Reconciliation.period == period))
    return [((), runs or 0)]


def latest_reconciliation(session: Any) -> dict[str, list[Sample]]:
    """When a reconciliation last ran, and the discrepancies by code its latest run left."""
    from sqlalchemy import select

    from billing.models import Reconciliation

    run = session.scalars(select(Reconciliation)
                          .order_by(Reconciliation.last_run_at.desc()).limit(1)).first()
    if run is None:
        return {}
    codes = (run.summary or {}).get("discrepancies") or {}
    return {
        RECONCILIATION_LAST_RUN: [((), _ts(run.last_run_at))],
        DISCREPANCIES: [((run.period, _code(code)), n) for code, n in sorted(codes.items())],
    }


def job_runs(session: Any) -> dict[str, list[Sample]]:
    """From `job_run`: rows by job and status, and per job the last success and failure."""
    from sqlalchemy import func, select

    from kernel.jobruns import JobRun

    stmt = (select(JobRun.job, JobRun.status, func.count(), func.max(JobRun.finished_at))
            .group_by(JobRun.job, JobRun.status))
    out: dict[str, list[Sample]] = {JOB_RUNS_BY_STATUS: [], JOB_LAST_SUCCESS: [], JOB_LAST_FAILURE: []}
    for job, status, n, finished in session.execute(stmt):
        out[JOB_RUNS_BY_STATUS].append(((job, status), n))
        if finished is not None and status == "succeeded":
            out[JOB_LAST_SUCCESS].append(((job,), _ts(finished)))
        if finished is not None and status == "failed":
            out[JOB_LAST_FAILURE].append(((job,), _ts(finished)))
    return out


def register_finance_sources(collector: ScrapeCollector) -> None:
    """The money series: served on `/metrics/finance` to a finance key, never on `/metrics`."""
    collector.register_group("subsidy", [
        Family(SUBSIDY_RESERVED, "Subsidy reserved on quotas by reconciliation (fen)", ("county",), "counter"),
        Family(SUBSIDY_RELEASED, "Reserved subsidy released again: claim rejected or re-evaluated (fen)",
               ("county",), "counter"),
        Family(SUBSIDY_GRANTED, "Subsidy granted by approval (fen)", ("county",), "counter"),
        Family(SUBSIDY_CLAWED_BACK, "Granted subsidy clawed back after usage was voided (fen)",
               ("county",), "counter"),
    ], subsidy_by_county)


def register_database_sources(collector: ScrapeCollector) -> None:
    """Operational figures from the database, served on the public `/metrics`."""
    collector.register(
        ENTERPRISES_NEAR_CAP, "Enterprises whose reserved + granted subsidy is at least 90% of the cap",
        ["year"], quota_near_cap)
    collector.register(
        RECONCILIATION_PREVIOUS_RUNS,
        "Runs of last month's reconciliation (Asia/Shanghai months); 0 until it has run", [],
        previous_period_reconciliation_runs)
    collector.register_group("reconciliation", [
        Family(RECONCILIATION_LAST_RUN, "When a reconciliation last ran (Unix time)"),
        Family(DISCREPANCIES, "Discrepancies by code left by the most recent reconciliation run",
               ("period", "code")),
    ], latest_reconciliation)
    collector.register_group("jobs", [
        Family(JOB_RUNS_BY_STATUS, "Job runs recorded in job_run, by job and current status",
               ("job", "status")),
        Family(JOB_LAST_SUCCESS, "When each scheduled job last finished successfully (Unix time)", ("job",)),
        Family(JOB_LAST_FAILURE, "When each scheduled job last failed (Unix time); alert when it is "
               "later than the last success", ("job",)),
    ], job_runs)


def scrape_collector(app: Flask) -> ScrapeCollector:
    return app.extensions["voucher.metrics.scrape"]


def finance_collector(app: Flask) -> ScrapeCollector:
    return app.extensions["voucher.metrics.finance"]


def set_near_cap_source(app: Flask, fn: Callable[[Any], Mapping[int | str, int]]) -> None:
    """Replace how `voucher_enterprises_near_cap{year}` is computed: fn(session) -> {year: n}."""
    scrape_collector(app).register(
        ENTERPRISES_NEAR_CAP, "Enterprises whose reserved + granted subsidy is at least 90% of the cap",
        ["year"], lambda s: [((str(y),), n) for y, n in fn(s).items()])


# --- The Flask side -------------------------------------------------------------------------
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labelled series, looked up once


def count_request(route: str, method: str, status: int, seconds: float | None) -> None:
    """One answered request in voucher_http_requests_total and its duration: the Flask hook's
    and api.fastpath's one way of counting."""
    key = (route, method if method in METHODS else "OTHER", status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (HTTP_REQUESTS.labels(key[0], key[1], str(status)),
                                 HTTP_DURATION.labels(key[0], key[1]))
    series[0].inc()
    if seconds is not None:
        series[1].observe(seconds)


class _Chain:
    """A registry-like view over several collectors, for generate_latest."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self):
        for c in self.collectors:
            yield from c.collect()


def exposition(app: Flask) -> bytes:
    """The text format of every series: all workers' files in multiprocess mode, plus the DB figures."""
    if app.config["VOUCHER_SETTINGS"].prometheus_multiproc_dir:  # PROMETHEUS_MULTIPROC_DIR
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(_Chain(registry, scrape_collector(app)))  # type: ignore[arg-type]
    return generate_latest(_Chain(REGISTRY, scrape_collector(app)))  # type: ignore[arg-type]


def route_of() -> str:
    """The matched URL rule's template (`/v1/providers/<provider_id>`), never the raw path."""
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def init_metrics(app: Flask) -> None:
    """Request hooks, event listeners, the DB scrape sources and the `/metrics` endpoint."""
    collector = ScrapeCollector(app.extensions["voucher.db"])
    app.extensions["voucher.metrics.scrape"] = collector
    register_database_sources(collector)
    finance = app.extensions["voucher.metrics.finance"] = ScrapeCollector(app.extensions["voucher.db"])
    register_finance_sources(finance)
    hook_jobs()

    @app.before_request
    def _start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.get("metrics_started")
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        count_request(rule.rule if rule is not None else "<unmatched>", req.method, response.status_code,
                      None if started is None else time.perf_counter() - started)
        return response

    events = app.extensions["voucher.events"]

    def _batch(provider_id: str, result: Any) -> None:
        started = g.get("metrics_started") if has_request_context() else None
        seconds = time.perf_counter() - started if started is not None else None
        record_batch(provider_id, result, seconds, source="push")

    def _voided(_session: Any, record: Any) -> None:
        record_void(getattr(record, "provider_id", None))

    events.on(Event.BATCH_INGESTED, _batch)
    events.on(Event.RECORD_VOIDED, _voided)

    def metrics_view():
        return Response(exposition(current_app), mimetype=CONTENT_TYPE_LATEST)

    from api.auth import requires
    from api.openapi import doc

    @requires("finance")
    def finance_metrics_view():
        # Figures read from the database at scrape time only; nothing per worker.
        body = generate_latest(finance_collector(current_app))  # type: ignore[arg-type]
        return Response(body, mimetype=CONTENT_TYPE_LATEST)

    doc(summary="Prometheus metrics (operational)",
        description="Text exposition of the operational `voucher_*` series (requests, ingestion, "
                    "jobs, reconciliation state), summed over all gunicorn workers. "
                    "Unauthenticated and free of money figures; still keep it on the internal network.",
        tags=["operations"], response_content_type="text/plain")(metrics_view)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    doc(summary="Prometheus metrics (subsidy money)",
        description="Subsidy reserved, released, granted and clawed back by county (fen), for "
                    "Prometheus with a finance key (`authorization.credentials_file`).",
        tags=["operations"], response_content_type="text/plain")(finance_metrics_view)
    app.add_url_rule("/metrics/finance", "metrics_finance", finance_metrics_view, methods=["GET"])


def start_metrics_server(port: int, addr: str = "0.0.0.0", multiproc_dir: str | None = None):
    """Serve /metrics on its own port from a process without HTTP (the scheduler).

    Serves the default registry (in multiprocess mode, `multiproc_dir` =
    `Settings.prometheus_multiproc_dir`, every process's files); returns prometheus-client's
    (server, thread) so a caller can shut it down.
    """
    from prometheus_client import start_http_server

    hook_jobs()
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return start_http_server(port, addr, registry=registry)
    return start_http_server(port, addr)
