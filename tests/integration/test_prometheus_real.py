"""The Prometheus adapter against a real Prometheus 2.x with backfilled kube-state-metrics history.

Needs Debian's prometheus package (installed by scripts/ensure-prometheus.sh when missing).
Never skipped: a Prometheus that cannot be installed or started fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from stdnum.cn import uscc as uscc_mod

from adapters.config import ProviderConfig
from adapters.prometheus import PrometheusAdapter, complete_windows
from metering.records import UsageRecordIn
from tests.integration.prometheus_harness import Dataset, PrometheusServer, default_dataset

pytestmark = pytest.mark.integration
H = timedelta(hours=1)


def make_uscc(n: int) -> str:
    body = f"91330402MA{n:07d}"
    return body + uscc_mod.calc_check_digit(body)


TENANTS = {"ent-a": make_uscc(31), "ent-b": make_uscc(32), "ent-c": make_uscc(33)}  # lab-x unmapped
PRICES = {"gpu": 800, "gpu.a100": 1200}
GPU_MODEL = {"ent-a": "a100"}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return default_dataset(datetime.now(UTC))


@pytest.fixture(scope="module")
def prometheus(
    dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), dataset) as server:
        yield server


@pytest.fixture(scope="module")
def config(prometheus: PrometheusServer) -> ProviderConfig:
    return prometheus.provider_config(TENANTS, PRICES, gpu_model=GPU_MODEL)


def quantities(records: list[dict]) -> dict[tuple[str, datetime], Decimal]:
    return {
        (r["metadata"]["namespace"], datetime.fromisoformat(r["started_at"])): Decimal(
            r["quantity"]
        )
        for r in records
    }


def test_gpu_hours_per_namespace_and_hour_equal_the_generated_data_exactly(dataset, config):
    out = PrometheusAdapter(config).extract(dataset.start - 2 * H, dataset.end)

    expected = {k: q for k, q in dataset.expected_quantities().items() if k[0] in TENANTS}
    assert quantities(out.records) == expected
    assert {r["quantity"] for r in out.records} >= {
        "0.116667",
        "2.55",
        "3.333333",
    }  # rounding exercised
    for record in out.records:
        ns = record["metadata"]["namespace"]
        start = datetime.fromisoformat(record["started_at"])
        assert record["record_id"] == f"{config.cluster}:{ns}:{start.isoformat()}"
        assert datetime.fromisoformat(record["ended_at"]) - start == H
        assert record["enterprise_uscc"] == TENANTS[ns]
        assert record["resource"] == ("gpu.a100" if ns == "ent-a" else "gpu")
        price = PRICES[record["resource"]]
        assert record["amount"] == int(
            (Decimal(record["quantity"]) * price).quantize(Decimal(1), ROUND_HALF_UP)
        )
        UsageRecordIn.model_validate(record)
    assert len({r["record_id"] for r in out.records}) == len(out.records)


def test_only_running_pods_count_though_completed_pods_keep_their_requests(dataset, config):
    billed = quantities(PrometheusAdapter(config).extract(dataset.start, dataset.end).records)
    second, fourth = dataset.start + H, dataset.start + 3 * H
    # ent-b, hour 2: two 1-GPU containers all hour + the 3-GPU batch pod's 11 Running minutes
    assert billed[("ent-b", second)] == Decimal("2.55")
    # ent-a, hour 4: 2 GPUs all hour + train-1's 4 GPUs until it Succeeded at minute 200
    assert billed[("ent-a", fourth)] == Decimal("3.333333")  # (120 + 4 × 20) / 60
    # the always-Pending ent-c pod is never billed: ent-c only has the notebook's 7 minutes
    assert [k for k in billed if k[0] == "ent-c"] == [("ent-c", dataset.start + 2 * H)]

    # The data does hold the finished pods' requests: summing requests alone would overbill.
    naive_query = (
        'sum by (namespace) (kube_pod_container_resource_requests{resource="nvidia_com_gpu"})'
    )
    naive = PrometheusAdapter(replace(config, settings={**config.settings, "query": naive_query}))
    naive_billed = quantities(naive.extract(dataset.start, dataset.end).records)
    assert naive_billed[("ent-b", second)] > billed[("ent-b", second)]
    assert sum(naive_billed.values()) > sum(billed.values())


def test_unmapped_namespace_is_skipped_per_window(dataset, config):
    out = PrometheusAdapter(config).extract(dataset.start, dataset.end)
    assert out.unmapped_tenants() == {"lab-x"}
    assert out.skipped_by_reason() == {"unmapped_tenant": dataset.hours}


def test_limits_metric_gives_the_same_gpu_hours(dataset, prometheus):
    limits = prometheus.provider_config(
        TENANTS, PRICES, gpu_model=GPU_MODEL, metric="kube_pod_container_resource_limits"
    )
    requests_config = prometheus.provider_config(TENANTS, PRICES, gpu_model=GPU_MODEL)
    window = (dataset.start, dataset.end)
    assert (
        PrometheusAdapter(limits).extract(*window).records
        == PrometheusAdapter(requests_config).extract(*window).records
    )


def test_one_window_per_query_equals_one_query_for_all(dataset, prometheus, config):
    hourly = prometheus.provider_config(TENANTS, PRICES, gpu_model=GPU_MODEL, hours_per_query=1)
    assert (
        PrometheusAdapter(hourly).extract(dataset.start, dataset.end).records
        == PrometheusAdapter(config).extract(dataset.start, dataset.end).records
    )


def test_windows_are_complete_and_resuming_yields_the_same_record_ids(dataset, config):
    now = dataset.end + timedelta(minutes=4)  # 5 min lag: the data's last window is still open
    adapter = PrometheusAdapter(config, clock=lambda: now)
    assert adapter.complete_windows(dataset.start) == dataset.windows()[:-1]
    first = adapter.extract(dataset.start, now)
    assert max(r["ended_at"] for r in first.records) == (dataset.end - H).isoformat()

    later = PrometheusAdapter(config, clock=lambda: dataset.end + timedelta(minutes=5))
    resumed = later.extract(dataset.end - 3 * H + timedelta(minutes=20), dataset.end)
    by_id = {r["record_id"]: r for r in first.records}
    overlap = [r for r in resumed.records if r["record_id"] in by_id]
    assert overlap and all(by_id[r["record_id"]] == r for r in overlap)  # duplicates on ingest
    assert {r["started_at"] for r in resumed.records} == {
        w.isoformat()
        for w in complete_windows(dataset.end - 3 * H, dataset.end + timedelta(minutes=5))
    }


def test_series_that_stop_without_staleness_marker_are_read_for_the_lookback(dataset, config):
    """Documents a Prometheus property the module docstring warns about: backfilled series end
    without staleness markers, so the window after the data's end sees the last sample for
    5 minutes of lookback (instants :00 to :04). Live scrapes write the markers."""
    out = PrometheusAdapter(config).extract(dataset.end, dataset.end + H)
    last = dataset.minutes - 1
    running = {
        ns: sum(
            sum(p.gpus) for p in dataset.pods if p.namespace == ns and p.phase_at(last) == "Running"
        )
        for ns in TENANTS
    }
    assert quantities(out.records) == {
        (ns, dataset.end): (Decimal(g * 5) / 60).quantize(Decimal("0.000001"), ROUND_HALF_UP)
        for ns, g in running.items()
        if g
    }


def test_pull_stores_exactly_the_generated_gpu_hours_and_repulls_nothing(dataset, config, db, finance):
    """Through the same ingestion path as the push API, on both databases."""
    from dataclasses import replace

    from sqlalchemy import select

    from adapters.pull import pull_provider
    from metering.models import UsageRecord

    finance.post("/v1/providers", json={"id": config.provider_id, "name": "K8s GPU", "kind": "intelligent_computing"})
    for uscc in TENANTS.values():
        finance.post("/v1/enterprises", json={"uscc": uscc, "name": uscc})
    # resume from the data's first hour; pull up to its end (the adapter never emits open windows)
    config = replace(config, settings={**config.settings, "first_pull_seconds": int((dataset.end - dataset.start).total_seconds())})
    first = pull_provider(db, config, now=dataset.end)
    expected = {k: q for k, q in dataset.expected_quantities().items() if k[0] in TENANTS and q}
    assert first.accepted == len(expected) and first.rejected == 0
    assert "lab-x" in first.unmapped_tenants
    again = pull_provider(db, config, now=dataset.end)
    assert (again.accepted, again.duplicates) == (0, again.records)
    with db.session() as s:
        rows = list(s.scalars(select(UsageRecord)))
    assert sum((r.quantity for r in rows), Decimal(0)) == sum(expected.values(), Decimal(0))
