"""Prometheus adapter without a server: window arithmetic, complete windows only, record shape.

A fake session answers `query_range` the way Prometheus does: one value per instant
start, start+step, …, ≤ end, read from a per-namespace function of the instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlparse

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.cn import uscc as uscc_mod

from adapters.config import ConfigError, ProviderConfig
from adapters.prometheus import (
    PrometheusAdapter,
    PrometheusError,
    complete_windows,
    default_query,
    floor_hour,
    gpu_hours,
)
from metering.records import UsageRecordIn


def make_uscc(n: int) -> str:
    body = f"91330402MA{n:07d}"
    return body + uscc_mod.calc_check_digit(body)


ENT_A, ENT_B = make_uscc(21), make_uscc(22)
T0 = datetime(2025, 6, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def make_config(**settings: Any) -> ProviderConfig:
    return ProviderConfig(
        provider_id="jx-k8s",
        type="prometheus",
        cluster="jx-k8s",
        settings={"url": "http://prom.example:9090/", **settings},
        tenants={"ent-a": ENT_A, "ent-b": ENT_B},
        prices={"gpu": 800, "gpu.a100": 1200},
    )


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.text = body if isinstance(body, str) else json.dumps(body)


class FakePrometheus:
    """`query_range` over namespaces whose GPU count is `series[ns](epoch seconds)` (None = absent)."""

    def __init__(self, series: dict[str, Callable[[int], str | None]]) -> None:
        self.series = series
        self.calls: list[dict[str, Any]] = []
        self.reply: FakeResponse | None = None

    def post(
        self, url: str, data: dict[str, str], headers: dict[str, str], timeout: float
    ) -> FakeResponse:
        self.calls.append(
            {"url": url, "data": dict(data), "headers": dict(headers), "timeout": timeout}
        )
        if self.reply is not None:
            return self.reply
        start, end, step = int(data["start"]), int(data["end"]), int(data["step"])
        result = []
        for ns, fn in self.series.items():
            values = [[t, v] for t in range(start, end + 1, step) if (v := fn(t)) is not None]
            if values:
                result.append({"metric": {"namespace": ns}, "values": values})
        return FakeResponse(
            200, {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )


def adapter_for(fake: FakePrometheus, now: datetime, **settings: Any) -> PrometheusAdapter:
    return PrometheusAdapter(make_config(**settings), session=fake, clock=lambda: now)


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# --- window arithmetic ------------------------------------------------------------------------


def test_floor_hour_is_utc_and_needs_a_timezone():
    shanghai = datetime.fromisoformat("2025-06-01T08:59:59.999+08:00")
    assert floor_hour(shanghai) == T0
    with pytest.raises(ValueError):
        floor_hour(datetime(2025, 6, 1))


def test_complete_windows_stop_lag_before_now():
    lag = timedelta(minutes=5)
    assert complete_windows(T0, T0 + 3 * H + lag, lag=lag) == [T0, T0 + H, T0 + 2 * H]
    assert complete_windows(T0, T0 + 3 * H + lag - timedelta(seconds=1), lag=lag) == [T0, T0 + H]
    # resuming mid-hour includes the window holding the resume point (same record_id again)
    assert complete_windows(T0 + timedelta(minutes=59), T0 + 2 * H, lag=timedelta(0)) == [
        T0,
        T0 + H,
    ]
    assert complete_windows(T0 + 2 * H, T0 + 2 * H, lag=timedelta(0)) == []
    assert complete_windows(T0, T0 + 30 * timedelta(minutes=1)) == []


@given(
    resume=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
    ),
    ahead=st.integers(min_value=0, max_value=72 * 3600),
    lag=st.integers(min_value=0, max_value=7200),
)
def test_complete_windows_are_whole_consecutive_and_closed(resume, ahead, lag):
    now = resume + timedelta(seconds=ahead)
    windows = complete_windows(resume, now, lag=timedelta(seconds=lag))
    for w in windows:
        assert w == floor_hour(w) and w + H <= now - timedelta(seconds=lag)
    assert all(b - a == H for a, b in zip(windows, windows[1:], strict=False))
    if windows:
        assert windows[0] == floor_hour(resume)
        assert windows[-1] + 2 * H > now - timedelta(seconds=lag)  # the next one is still open


def test_query_covers_whole_windows_with_one_instant_per_step():
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    adapter = adapter_for(fake, T0 + 3 * H + timedelta(minutes=10))
    adapter.extract(T0, T0 + 10 * H)

    [call] = fake.calls
    assert urlparse(call["url"]).path == "/api/v1/query_range"
    # instants T0, T0+60 s, …, T0+3 h−60 s: 180 of them, 60 per window, none on a boundary twice
    assert call["data"]["start"] == str(epoch(T0))
    assert call["data"]["end"] == str(epoch(T0 + 3 * H) - 60)
    assert call["data"]["step"] == "60"


def test_open_windows_are_never_emitted():
    fake = FakePrometheus({"ent-a": lambda t: "2"})
    at = T0 + 2 * H + timedelta(minutes=4, seconds=59)  # 5 min lag: the 01:00 window is still open
    out = adapter_for(fake, at).extract(T0 - 5 * H, at + 5 * H)
    assert [r["started_at"] for r in out.records] == [
        "2025-05-31T19:00:00+00:00",
        "2025-05-31T20:00:00+00:00",
        "2025-05-31T21:00:00+00:00",
        "2025-05-31T22:00:00+00:00",
        "2025-05-31T23:00:00+00:00",
        "2025-06-01T00:00:00+00:00",
    ]
    assert max(int(c["data"]["end"]) for c in fake.calls) < epoch(T0 + H)

    later = adapter_for(fake, at + timedelta(seconds=1)).extract(T0, at + 5 * H)
    assert [r["started_at"] for r in later.records][-1] == "2025-06-01T01:00:00+00:00"


def test_windows_also_end_at_the_requested_end():
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    out = adapter_for(fake, T0 + 48 * H).extract(
        T0 + timedelta(minutes=30), T0 + 3 * H + timedelta(minutes=59)
    )
    assert [r["started_at"] for r in out.records] == [(T0 + i * H).isoformat() for i in range(3)]


def test_lag_is_configurable():
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    now = T0 + H + timedelta(minutes=20)
    assert adapter_for(fake, now, lag_seconds=1800).extract(T0, now).records == []
    assert len(adapter_for(fake, now, lag_seconds=0).extract(T0, now).records) == 1


# --- what is billed ---------------------------------------------------------------------------


def test_record_shape_and_exact_quantities():
    def ent_a(t: int) -> str | None:
        minute = (t - epoch(T0)) // 60
        return "3" if minute < 17 else "0"  # 3 GPUs for 17 minutes of the first hour

    def ent_b(t: int) -> str | None:
        minute = (t - epoch(T0)) // 60
        return "1" if 60 <= minute < 67 else None  # 7 GPU-minutes in the second hour

    fake = FakePrometheus({"ent-a": ent_a, "ent-b": ent_b})
    out = adapter_for(fake, T0 + 3 * H, gpu_model={"ent-a": "a100"}).extract(T0, T0 + 2 * H)

    assert out.skipped == []
    assert out.records == [
        {
            "record_id": "jx-k8s:ent-a:2025-06-01T00:00:00+00:00",
            "enterprise_uscc": ENT_A,
            "resource": "gpu.a100",
            "unit": "gpu_hour",
            "quantity": "0.85",  # 51 GPU-minutes
            "started_at": "2025-06-01T00:00:00+00:00",
            "ended_at": "2025-06-01T01:00:00+00:00",
            "amount": 1020,
            "currency": "CNY",
            "metadata": {"cluster": "jx-k8s", "namespace": "ent-a"},
        },
        {
            "record_id": "jx-k8s:ent-b:2025-06-01T01:00:00+00:00",
            "enterprise_uscc": ENT_B,
            "resource": "gpu",
            "unit": "gpu_hour",
            "quantity": "0.116667",  # 7/60 rounded half-up
            "started_at": "2025-06-01T01:00:00+00:00",
            "ended_at": "2025-06-01T02:00:00+00:00",
            "amount": 93,  # 0.116667 × 800 = 93.3336
            "currency": "CNY",
            "metadata": {"cluster": "jx-k8s", "namespace": "ent-b"},
        },
    ]
    # ent-a's all-zero second hour gives no record; the push schema takes them as they are
    for record in out.records:
        UsageRecordIn.model_validate(record)


def test_unmapped_namespace_is_skipped_once_per_window_with_usage():
    fake = FakePrometheus(
        {"ent-a": lambda t: "1", "kube-system": lambda t: "4", "idle": lambda t: "0"}
    )
    out = adapter_for(fake, T0 + 2 * H + timedelta(minutes=5)).extract(T0, T0 + 2 * H)
    assert len(out.records) == 2
    assert out.skipped_by_reason() == {"unmapped_tenant": 2}
    assert out.unmapped_tenants() == {"kube-system"}


def test_values_are_read_as_decimal_strings_not_floats():
    fake = FakePrometheus({"ent-a": lambda t: "0.1"})  # 0.1 × 60 instants = 6 GPU-minutes
    [record] = adapter_for(fake, T0 + 2 * H).extract(T0, T0 + H).records
    assert record["quantity"] == "0.1"


def test_bad_samples_are_reported_not_billed():
    fake = FakePrometheus(
        {"ent-a": lambda t: "NaN" if t == epoch(T0) else "1", "ent-b": lambda t: "-1"}
    )
    out = adapter_for(fake, T0 + 2 * H).extract(T0, T0 + H)
    assert [r["quantity"] for r in out.records] == ["0.983333"]  # 59 of 60 instants
    assert out.skipped_by_reason() == {"bad_row": 2}  # once per (namespace, window)
    assert [s.detail.split(": ")[1] for s in out.skipped] == [
        "1 samples not counted (NaN)",
        "60 samples not counted (-1)",
    ]


def test_no_price_is_skipped():
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    config = replace(make_config(), prices={"gpu.h800": 1000})
    out = PrometheusAdapter(config, session=fake, clock=lambda: T0 + 2 * H).extract(T0, T0 + H)
    assert out.records == [] and out.skipped_by_reason() == {"no_price": 1}


def test_long_ranges_are_split_into_contiguous_queries():
    fake = FakePrometheus({"ent-a": lambda t: str(1 + (t // 3600) % 3), "ent-b": lambda t: "2"})
    now = T0 + 50 * H
    split = adapter_for(fake, now, hours_per_query=24).extract(T0, now)
    starts_ends = [(int(c["data"]["start"]), int(c["data"]["end"])) for c in fake.calls]
    # 49 complete windows (the last ends at 49:00 ≤ now − 5 min): 24 + 24 + 1, no gap, no overlap
    assert starts_ends == [
        (epoch(T0), epoch(T0 + 24 * H) - 60),
        (epoch(T0 + 24 * H), epoch(T0 + 48 * H) - 60),
        (epoch(T0 + 48 * H), epoch(T0 + 49 * H) - 60),
    ]
    fake.calls.clear()
    whole = adapter_for(fake, now, hours_per_query=100).extract(T0, now)
    assert len(fake.calls) == 1
    assert split.records == whole.records
    assert len(whole.records) == 2 * 49


def test_step_must_divide_the_hour_and_is_used_in_the_integration():
    with pytest.raises(ConfigError, match="step"):
        PrometheusAdapter(make_config(step=7))
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    out = adapter_for(fake, T0 + 2 * H, step=300).extract(T0, T0 + H)
    assert fake.calls[0]["data"]["step"] == "300"
    assert fake.calls[0]["data"]["end"] == str(epoch(T0 + H) - 300)
    assert [r["quantity"] for r in out.records] == ["1"]


def test_bearer_token_from_the_named_variable(monkeypatch):
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    monkeypatch.setenv("JX_PROM_TOKEN", "s3cret")
    adapter_for(fake, T0 + 2 * H, token_env="JX_PROM_TOKEN").extract(T0, T0 + H)
    assert fake.calls[0]["headers"]["Authorization"] == "Bearer s3cret"
    monkeypatch.delenv("JX_PROM_TOKEN")
    with pytest.raises(ConfigError, match="JX_PROM_TOKEN"):
        adapter_for(fake, T0 + 2 * H, token_env="JX_PROM_TOKEN").extract(T0, T0 + H)


def test_prometheus_errors_raise_with_its_message():
    fake = FakePrometheus({})
    fake.reply = FakeResponse(
        400, {"status": "error", "errorType": "bad_data", "error": "parse error"}
    )
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        adapter_for(fake, T0 + 2 * H).extract(T0, T0 + H)
    fake.reply = FakeResponse(502, "<html>bad gateway</html>")
    with pytest.raises(PrometheusError, match="not JSON"):
        adapter_for(fake, T0 + 2 * H).extract(T0, T0 + H)


def test_default_query_joins_running_pods_and_is_configurable():
    query = default_query()
    assert 'kube_pod_container_resource_requests{resource="nvidia_com_gpu"}' in query
    assert 'kube_pod_status_phase{phase="Running"} == 1' in query
    assert "on (namespace, pod) group_left()" in query
    limits = PrometheusAdapter(
        make_config(metric="kube_pod_container_resource_limits", resource="amd_com_gpu")
    ).query()
    assert 'kube_pod_container_resource_limits{resource="amd_com_gpu"}' in limits
    assert (
        PrometheusAdapter(make_config(query="sum by (namespace) (x)")).query()
        == "sum by (namespace) (x)"
    )
    with pytest.raises(ConfigError, match="metric"):
        PrometheusAdapter(make_config(metric="bad metric"))
    with pytest.raises(ConfigError, match="url"):
        PrometheusAdapter(replace(make_config(), settings={}))


def test_one_gpu_model_for_every_namespace():
    adapter = PrometheusAdapter(make_config(gpu_model="h800"))
    assert adapter.resource_for("anything") == "gpu.h800"
    assert PrometheusAdapter(make_config()).resource_for("ent-a") == "gpu"


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from([15, 30, 60, 120, 300, 3600]))
def test_gpu_hours_is_exact_half_up(value_sum, step):
    expected = (Decimal(value_sum * step) / Decimal(3600)).quantize(
        Decimal("0.000001"), ROUND_HALF_UP
    )
    assert gpu_hours(Decimal(value_sum), step) == expected


def test_provider_file_settings(tmp_path):
    from adapters.config import load_provider_config

    path = tmp_path / "jx-k8s.toml"
    path.write_text(
        "[adapter]\n"
        'type = "prometheus"\n'
        'cluster = "jx-k8s-1"\n'
        'url = "http://prom.example:9090"\n'
        'gpu_model = {"ent-a" = "a100"}\n'
        "lag_seconds = 600\n"
        "[tenants]\n"
        f'"ent-a" = "{ENT_A}"\n'
        "[prices]\n"
        '"gpu.a100" = 1200\n'
    )
    fake = FakePrometheus({"ent-a": lambda t: "1"})
    now = T0 + H + timedelta(minutes=10)
    adapter = PrometheusAdapter(load_provider_config(path), session=fake, clock=lambda: now)
    assert adapter.complete_windows(T0) == [T0]
    [record] = adapter.extract(T0, now).records
    assert record["record_id"] == "jx-k8s-1:ent-a:2025-06-01T00:00:00+00:00"
    assert (record["resource"], record["amount"]) == ("gpu.a100", 1200)


def test_gpus_held_for_less_than_the_rounding_step_are_skipped_and_counted():
    # 0.000001 GPUs for one instant of 60 s = 1.7e-8 GPU-hours: 0 at 6 decimals, not a record
    fake = FakePrometheus({"ent-a": lambda t: "0.000001" if t == epoch(T0) else "0",
                           "ent-b": lambda t: "0"})
    out = adapter_for(fake, T0 + 2 * H).extract(T0, T0 + H)
    assert out.records == [] and out.skipped_by_reason() == {"zero_quantity": 1}
