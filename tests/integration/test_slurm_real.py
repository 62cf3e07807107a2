"""The Slurm adapters against a real single-node Slurm with slurmdbd accounting.

Needs root, Debian's slurm-wlm/slurmdbd/munge (installed by scripts/ensure-slurm.sh when
missing) and MariaDB on 127.0.0.1:3306. Never skipped: a cluster that cannot start fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from stdnum.cn import uscc as uscc_mod

from adapters.config import ProviderConfig
from adapters.slurm import SacctAdapter, SlurmrestdAdapter, parse_sacct, pull_window
from tests.integration.slurm_harness import (
    RESTD_API,
    SlurmCluster,
    Workload,
    expected_records,
)

pytestmark = pytest.mark.integration

RECORD_FIELDS = tuple(
    "record_id enterprise_uscc resource unit quantity started_at ended_at amount currency".split()
)


def _uscc(n: int) -> str:
    body = f"91330402MA{n:07d}"
    return body + uscc_mod.calc_check_digit(body)


TENANTS = {"ent-a": _uscc(1), "ent-b": _uscc(2)}  # lab-x stays unmapped on purpose
PRICES = {"gpu": 800, "gpu.a100": 1200, "cpu": 5}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def workload(slurm: SlurmCluster) -> Workload:
    return slurm.run_workload()


@pytest.fixture(scope="session")
def config(slurm: SlurmCluster) -> ProviderConfig:
    return slurm.provider_config(TENANTS, PRICES)


def project(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: r[k] for k in RECORD_FIELDS} for r in records), key=lambda r: r["record_id"])


def test_real_sacct_output_bills_exactly_the_jobs_gpu_hours(workload, config):
    out = parse_sacct(workload.sacct_text, config)

    assert project(out.records) == project(expected_records(workload.runs, config))
    gpu_runs = [r for r in workload.runs if r.gpus]
    gpu_hours = sum(Decimal(r["quantity"]) for r in out.records if r["unit"] == "gpu_hour")
    assert gpu_hours == sum(r.quantity for r in gpu_runs)
    # each rounded quantity still carries the exact GPU-seconds of its run
    by_id = {f"{config.cluster}:{r.job_id_raw}:{r.start_epoch}": r for r in workload.runs}
    for record in out.records:
        assert round(Decimal(record["quantity"]) * 3600) == by_id[record["record_id"]].unit_seconds
        assert record["metadata"]["cluster"] == config.cluster
        assert record["metadata"]["user"] == "root"


def test_real_sacct_skips_unmapped_unfinished_and_cancelled_jobs(workload, config):
    out = parse_sacct(workload.sacct_text, config)
    reasons = {s.detail.split(":")[0].removeprefix("job "): s.reason for s in out.skipped}
    expected = (
        {j: "unmapped_tenant" for j in workload.unmapped}
        | {j: "not_ended" for j in workload.not_ended}
        | {j: "zero_duration" for j in workload.zero_duration}
    )
    # slurmdbd may not have recorded a job that is still pending when sacct runs (seen on a
    # loaded machine); such a job is absent, which bills nothing either. Every other job
    # must be there with its reason.
    absent = set(expected) - set(reasons)
    assert absent <= set(workload.not_ended), absent
    assert reasons == {j: r for j, r in expected.items() if j not in absent}
    billed = {r["metadata"]["job_id"] for r in out.records}
    assert not billed & set(workload.not_ended)
    assert out.unmapped_tenants() == {"lab-x"}


def test_real_requeue_and_array_rows_are_distinct_records(workload, config):
    out = parse_sacct(workload.sacct_text, config)
    ids = [r["record_id"] for r in out.records]
    assert len(ids) == len(set(ids)) == len(workload.runs)
    requeued = [r for r in out.records if r["metadata"]["job_id"] == workload.job_ids["requeue"]]
    assert [r["metadata"]["state"] for r in requeued] == ["REQUEUED", "COMPLETED"]
    tasks = [r for r in workload.runs if r.label == "array"]
    assert len({t.job_id_raw for t in tasks}) == 3


def test_real_step_rows_do_not_double_count(workload, config):
    allocations = parse_sacct(workload.sacct_text, config)
    with_steps = parse_sacct(workload.sacct_steps_text, config)
    assert with_steps.records == allocations.records
    assert with_steps.skipped_by_reason()["step_row"] >= len(workload.runs)  # .batch at least


def test_sacct_adapter_pulls_the_same_records_from_the_live_cluster(workload, config):
    start, end = workload.window
    pulled = SacctAdapter(config).extract(start, end)
    assert pulled.records == parse_sacct(workload.sacct_text, config).records
    assert pulled.skipped_by_reason()["not_ended"] == len(workload.not_ended)


def test_overlapping_pull_windows_return_the_same_record_ids(workload, config):
    adapter = SacctAdapter(config)
    now = datetime.now(UTC)
    first = adapter.extract(*pull_window(None, now))
    again = adapter.extract(*pull_window(now - timedelta(minutes=15), now + timedelta(minutes=1)))
    ids = {r["record_id"] for r in first.records}
    assert ids == {r["record_id"] for r in again.records}
    assert ids == {f"{config.cluster}:{r.job_id_raw}:{r.start_epoch}" for r in workload.runs}


def test_slurmrestd_adapter_reads_the_same_records_from_real_slurmrestd(slurm, workload, config):
    url = slurm.start_slurmrestd()
    restd_config = replace(
        config, type="slurmrestd", settings={"url": url, "api_version": RESTD_API}
    )
    pulled = SlurmrestdAdapter(restd_config).extract(*workload.window)

    def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: r["record_id"])

    assert by_id(pulled.records) == by_id(parse_sacct(workload.sacct_text, config).records)
    assert project(pulled.records) == project(expected_records(workload.runs, config))


def _provider_file(directory, config: ProviderConfig) -> None:
    lines = ["[adapter]", 'type = "sacct"', f'cluster = "{config.cluster}"',
             f'slurm_conf = "{config.settings["slurm_conf"]}"', "", "[tenants]"]
    lines += [f'"{k}" = "{v}"' for k, v in config.tenants.items()]
    lines += ["", "[prices]"] + [f'"{k}" = {v}' for k, v in config.prices.items()]
    (directory / f"{config.provider_id}.toml").write_text("\n".join(lines) + "\n")


def test_import_and_pull_store_exactly_the_jobs_usage(workload, config, db, finance, database_url, tmp_path):
    """`voucher import` then `voucher pull` against the live cluster: the GPU-hours and
    core-hours in the database equal the jobs' exactly, and re-running ingests nothing new."""
    from click.testing import CliRunner
    from sqlalchemy import select

    from metering.models import UsageRecord
    from voucher.cli import main

    finance.post("/v1/providers", json={"id": config.provider_id, "name": "HPC", "kind": "supercomputing"})
    for uscc in TENANTS.values():
        finance.post("/v1/enterprises", json={"uscc": uscc, "name": uscc})
    _provider_file(tmp_path, config)
    sacct_file = tmp_path / "jobs.sacct"
    sacct_file.write_text(workload.sacct_text)
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_PROVIDERS_DIR": str(tmp_path)}
    runner = CliRunner()
    expected = project(expected_records(workload.runs, config))

    first = runner.invoke(main, ["import", "--provider", config.provider_id, "--format", "sacct",
                                 str(sacct_file)], env=env)
    assert first.exit_code == 0, first.output
    assert f"accepted {len(expected)}, duplicates 0, rejected 0" in first.output
    assert "unmapped tenants: lab-x" in first.output

    again = runner.invoke(main, ["import", "--provider", config.provider_id, "--format", "sacct",
                                 str(sacct_file)], env=env)
    assert f"accepted 0, duplicates {len(expected)}" in again.output

    pulled = runner.invoke(main, ["pull", "--provider", config.provider_id], env=env)
    assert pulled.exit_code == 0, pulled.output
    assert "accepted 0," in pulled.output and f"duplicates {len(expected)}" in pulled.output

    with db.session() as s:
        rows = list(s.scalars(select(UsageRecord)))
    assert len(rows) == len(expected)
    for unit in ("gpu_hour", "core_hour"):
        stored = sum((r.quantity for r in rows if r.unit == unit), Decimal(0))
        want = sum((Decimal(r["quantity"]) for r in expected if r["unit"] == unit), Decimal(0))
        assert stored == want, unit
    assert sum(r.amount for r in rows) == sum(r["amount"] for r in expected)
