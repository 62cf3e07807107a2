"""Prometheus adapter: GPUs allocated per namespace (kube-state-metrics) → hourly GPU-hours.

What is billed: the GPUs that Running pods request, per Kubernetes namespace (the tenant),
integrated over one-hour windows [H, H+1h) aligned to the hour in UTC. The default query is

    sum by (namespace) (
      max by (namespace, pod, container) (
        kube_pod_container_resource_requests{resource="nvidia_com_gpu"})
      * on (namespace, pod) group_left()
      max by (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)
    )

kube-state-metrics keeps exporting the requests of Pending and Completed (Succeeded/Failed)
pods, so the join with the Running phase is what limits billing to pods that hold their GPUs.
The `max by` on both sides only removes duplicates when two kube-state-metrics replicas are
scraped; a single replica gives the same numbers without them.

Integration (exact, never float): one `query_range` with `start = H`, `end = H + 1h − step`
and `step` (default 60 s, must divide 3600) evaluates the query at H, H+step, …, H+3600−step:
exactly 3600/step instants, and each instant belongs to exactly one window, so windows tile
without gap or double count. Prometheus answers each instant with the latest sample at or
before it (within its 5-minute lookback), so every instant stands for the `step` seconds that
follow it: GPU-hours = Σ values × step / 3600. When kube-state-metrics is scraped every 60 s at
whole minutes (as the integration test's data is), instant H+k·60 reads exactly the sample
taken at H+k·60, every sample is counted once, and the result equals Σ GPUs per minute / 60
exactly. With scrapes at an offset (say :17 s), instant H+k·60 reads the sample taken at
H+(k−1)·60+17 s: still one sample per instant, shifted by under one step. Values are read from
the JSON strings into Decimal; Σ × step / 3600 is rounded half-up to 6 decimals with exact
rational arithmetic. Several windows are fetched with one query (`hours_per_query`, default 24,
capped by Prometheus's 11,000 points per series) and split by the instant's hour.

The `sum_over_time(...[1h:60s])` subquery was not chosen: in Prometheus 2.x its range is
closed at both ends, so evaluated at H+1h it holds 61 instants and counts each boundary minute
in two windows.

Caveats: a series that stops without a staleness marker (backfilled or remote-written data;
live scrapes write the markers) is still read for the 5-minute lookback after its last sample.
A window is only emitted once it is complete: its end must not be after
`now − lag_seconds` (default 300), so late scrapes and rule evaluation have landed; re-pulling
a window yields the same `record_id`, which ingest reports as a duplicate (or a conflict, if
Prometheus's data for that hour changed afterwards).

One record per (namespace, window) with GPU-hours > 0: `record_id`
`"{cluster}:{namespace}:{window start, UTC ISO 8601}"`, `resource` `gpu.<model>` when
`gpu_model` names one for the namespace (else `gpu`), `unit` `gpu_hour`. Namespaces not in
`[tenants]` give `Skipped("unmapped_tenant")` (one per window with usage); a resource without a
price gives `Skipped("no_price")`; a NaN, infinite or negative sample gives `Skipped("bad_row")`;
GPUs held for less than 0.0000005 GPU-hours (0 after rounding) give `Skipped("zero_quantity")`,
since a record's quantity is > 0.

Settings (`[adapter]`): `url` (required), `token_env` (bearer token variable), `metric`
(`kube_pod_container_resource_requests` or `kube_pod_container_resource_limits`), `resource`
(label value, default `nvidia_com_gpu`), `gpu_model` (a model for every namespace, or a table
namespace → model), `step` (seconds), `lag_seconds`, `hours_per_query`, `timeout` (seconds),
`query` (a whole PromQL expression replacing the default; it must return GPUs allocated per
series labelled by `tenant_label`, default `namespace`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from adapters.base import Extracted, Skipped
from adapters.config import ConfigError, ProviderConfig, amount_for

HOUR = timedelta(hours=1)
DEFAULT_METRIC = "kube_pod_container_resource_requests"
DEFAULT_RESOURCE = "nvidia_com_gpu"
DEFAULT_STEP = 60
DEFAULT_LAG = timedelta(seconds=300)
DEFAULT_HOURS_PER_QUERY = 24
MAX_POINTS = 11_000  # Prometheus refuses query_range answers with more points per series
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")


class PrometheusError(RuntimeError):
    """Prometheus could not be queried or refused the query; the message carries its answer."""


def floor_hour(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment` (timezone-aware)."""
    if moment.tzinfo is None:
        raise ValueError("need a timezone-aware datetime")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def complete_windows(
    resume_from: datetime, now: datetime, *, lag: timedelta = DEFAULT_LAG
) -> list[datetime]:
    """Starts of the hour windows from the one holding `resume_from` up to the last complete one.

    A window [H, H+1h) is complete when H+1h ≤ now − lag. The window holding `resume_from`
    is included even when `resume_from` is inside it: re-emitting a window is harmless (same
    record_id), missing its first minutes is not.
    """
    if now.tzinfo is None:
        raise ValueError("need a timezone-aware datetime")
    limit = now.astimezone(UTC) - lag
    out: list[datetime] = []
    window = floor_hour(resume_from)
    while window + HOUR <= limit:
        out.append(window)
        window += HOUR
    return out


def default_query(metric: str = DEFAULT_METRIC, resource: str = DEFAULT_RESOURCE) -> str:
    """GPUs allocated to Running pods, per namespace (see the module docstring)."""
    if not _METRIC_NAME.fullmatch(metric):
        raise ValueError(f"not a metric name: {metric!r}")
    value = json.dumps(resource)  # a PromQL double-quoted string, escapes included
    return (
        "sum by (namespace) ("
        f"max by (namespace, pod, container) ({metric}{{resource={value}}})"
        " * on (namespace, pod) group_left() "
        'max by (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)'
        ")"
    )


def gpu_hours(value_sum: Decimal, step: int) -> Decimal:
    """`value_sum × step / 3600` rounded half-up to 6 decimals, exactly (no float, no context)."""
    exact = Fraction(value_sum) * step / 3600
    micro = (exact * 1_000_000 * 2 + 1) // 2  # floor(x + ½): half-up for x ≥ 0
    return Decimal(micro).scaleb(-6)


def _quantity_str(quantity: Decimal) -> str:
    text = format(quantity, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class PrometheusAdapter:
    """Pulls hourly GPU-hours per namespace from the Prometheus HTTP API (`/api/v1/query_range`)."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        session: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        s = config.settings
        where = config.path or config.provider_id

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{where}: [adapter.{key}] {why}")

        if not s.get("url"):
            raise bad("url", "missing")
        self.metric = str(s.get("metric", DEFAULT_METRIC))
        if not _METRIC_NAME.fullmatch(self.metric):
            raise bad("metric", f"not a metric name: {self.metric!r}")
        self.resource_label = str(s.get("resource", DEFAULT_RESOURCE))
        step = s.get("step", DEFAULT_STEP)
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0 or 3600 % step:
            raise bad("step", "must be a whole number of seconds dividing 3600 (e.g. 60)")
        self.step = step
        lag = s.get("lag_seconds", int(DEFAULT_LAG.total_seconds()))
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise bad("lag_seconds", "must be a non-negative whole number of seconds")
        self.lag = timedelta(seconds=lag)
        per_query = s.get("hours_per_query", DEFAULT_HOURS_PER_QUERY)
        if isinstance(per_query, bool) or not isinstance(per_query, int) or per_query < 1:
            raise bad("hours_per_query", "must be a positive whole number")
        self.hours_per_query = max(1, min(per_query, MAX_POINTS * step // 3600))
        self.tenant_label = str(s.get("tenant_label", "namespace"))
        if not _LABEL_NAME.fullmatch(self.tenant_label):
            raise bad("tenant_label", f"not a label name: {self.tenant_label!r}")
        models = s.get("gpu_model")
        if models is not None and not isinstance(models, (str, Mapping)):
            raise bad("gpu_model", "must be a model name or a table namespace → model")
        for model in [models] if isinstance(models, str) else (models or {}).values():
            if not isinstance(model, str) or not _MODEL.fullmatch(model):
                raise bad("gpu_model", f"not a GPU model name: {model!r} (e.g. a100, h800)")
        self.gpu_model = models
        self.config = config
        self._session = session
        self._clock = clock or (lambda: datetime.now(UTC))

    # --- what is asked -------------------------------------------------------------------------

    def query(self) -> str:
        custom = self.config.settings.get("query")
        return str(custom) if custom else default_query(self.metric, self.resource_label)

    def url(self) -> str:
        return f"{str(self.config.settings['url']).rstrip('/')}/api/v1/query_range"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def resource_for(self, namespace: str) -> str:
        models = self.gpu_model
        model = models if isinstance(models, str) else (models or {}).get(namespace)
        return f"gpu.{model}" if model else "gpu"

    def complete_windows(
        self, resume_from: datetime, now: datetime | None = None
    ) -> list[datetime]:
        """Window starts a puller resuming at `resume_from` may bill now (see module function)."""
        return complete_windows(resume_from, now or self._clock(), lag=self.lag)

    # --- pulling -------------------------------------------------------------------------------

    def extract(self, start: datetime, end: datetime) -> Extracted:
        """Records of the complete hour windows from the one holding `start` to `end`.

        A window is emitted only if it ends at or before both `end` and `now − lag_seconds`.
        """
        if end.tzinfo is None:
            raise ValueError("need timezone-aware datetimes")
        end = end.astimezone(UTC)
        windows = [w for w in self.complete_windows(start) if w + HOUR <= end]
        out = Extracted()
        for i in range(0, len(windows), self.hours_per_query):
            chunk = windows[i : i + self.hours_per_query]
            # consecutive by construction: one query_range over [first, last + 1h − step]
            sums, bad = self.window_sums(chunk[0], chunk[-1] + HOUR)
            out.skipped.extend(bad)
            for (tenant, window), value_sum in sorted(
                sums.items(), key=lambda kv: (kv[0][1], kv[0][0])
            ):
                item = self._record(tenant, window, value_sum)
                if isinstance(item, Skipped):
                    out.skipped.append(item)
                elif item is not None:
                    out.records.append(item)
        return out

    def window_sums(
        self, start: datetime, end: datetime
    ) -> tuple[dict[tuple[str, datetime], Decimal], list[Skipped]]:
        """Σ sampled values per (tenant, hour window) for whole hours [start, end).

        NaN, infinite or negative samples are left out of the sum and reported, once per
        (tenant, window), as `bad_row`: under-billing an hour beats billing a guess.
        """
        start, end = floor_hour(start), floor_hour(end)
        body = self._query_range(start, end - timedelta(seconds=self.step))
        sums: dict[tuple[str, datetime], Decimal] = defaultdict(Decimal)
        rejected: dict[tuple[str, datetime], list[str]] = defaultdict(list)
        bad: list[Skipped] = []
        for series in body.get("result", []):
            labels = series.get("metric") or {}
            tenant = labels.get(self.tenant_label)
            if not tenant:
                bad.append(
                    Skipped("bad_row", f"series without a {self.tenant_label} label: {labels}")
                )
                continue
            for ts, raw in series.get("values", []):
                instant = datetime.fromtimestamp(int(Decimal(str(ts))), UTC)
                if not start <= instant < end:
                    continue
                try:
                    value = Decimal(raw)
                except (InvalidOperation, TypeError):
                    value = Decimal("NaN")
                if value.is_finite() and value >= 0:
                    sums[(tenant, floor_hour(instant))] += value
                else:
                    rejected[(tenant, floor_hour(instant))].append(str(raw))
        for (tenant, window), values in sorted(
            rejected.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            bad.append(
                Skipped(
                    "bad_row",
                    f"{self.tenant_label} {tenant!r}, window {window.isoformat()}: "
                    f"{len(values)} samples not counted ({', '.join(sorted(set(values))[:3])})",
                    tenant=tenant,
                )
            )
        return dict(sums), bad

    def _record(
        self, tenant: str, window: datetime, value_sum: Decimal
    ) -> dict[str, Any] | Skipped | None:
        if value_sum == 0:
            return None  # no GPUs held in this window: nothing to bill, no zero record
        quantity = gpu_hours(value_sum, self.step)
        if quantity == 0:  # held, but under 0.0000005 GPU-hours: a record's quantity is > 0
            return Skipped("zero_quantity", f"namespace {tenant!r}, window {window.isoformat()}",
                           tenant=tenant)
        started_at = window.isoformat()
        uscc = self.config.uscc_for(tenant)
        if uscc is None:
            return Skipped(
                "unmapped_tenant",
                f"namespace {tenant!r}, window {started_at}: {_quantity_str(quantity)} GPU-hours",
                tenant=tenant,
            )
        resource = self.resource_for(tenant)
        price = self.config.price_for(resource)
        if price is None:
            return Skipped("no_price", f"no price for {resource!r}", tenant=tenant)
        return {
            "record_id": f"{self.config.cluster}:{tenant}:{started_at}",
            "enterprise_uscc": uscc,
            "resource": resource,
            "unit": "gpu_hour",
            "quantity": _quantity_str(quantity),
            "started_at": started_at,
            "ended_at": (window + HOUR).isoformat(),
            "amount": amount_for(quantity, price),
            "currency": "CNY",
            "metadata": {"cluster": self.config.cluster, "namespace": tenant},
        }

    def _query_range(self, start: datetime, end: datetime) -> dict[str, Any]:
        import requests

        session = self._session or requests
        form = {
            "query": self.query(),
            "start": str(int(start.timestamp())),
            "end": str(int(end.timestamp())),
            "step": str(self.step),
        }
        url = self.url()
        try:
            resp = session.post(
                url,
                data=form,
                headers=self.headers(),
                timeout=float(self.config.settings.get("timeout", 60)),  # float ok: seconds, not money
            )
        except requests.RequestException as exc:
            raise PrometheusError(f"prometheus {url}: {exc}") from exc
        try:
            body = json.loads(resp.text)
        except ValueError:
            raise PrometheusError(
                f"prometheus {url}: HTTP {resp.status_code}, reply is not JSON: {resp.text[:500]}"
            ) from None
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            if isinstance(body, dict):
                detail = f"{body.get('errorType', '')}: {body.get('error', body)}"
            else:
                detail = str(body)
            raise PrometheusError(f"prometheus {url}: HTTP {resp.status_code}: {detail}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise PrometheusError(
                f"prometheus {url}: expected a matrix, got {data.get('resultType')!r}"
            )
        return data
