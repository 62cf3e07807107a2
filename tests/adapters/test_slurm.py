"""Slurm adapters: sacct text (short and Open XDMoD field lists) and slurmrestd JSON."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.cn import uscc as uscc_mod

from adapters.config import ConfigError, ProviderConfig, amount_for
from adapters.slurm import (
    SHORT_FIELDS,
    XDMOD_FIELDS,
    SacctAdapter,
    SacctFormatError,
    SlurmError,
    SlurmrestdAdapter,
    gpu_allocation,
    parse_sacct,
    parse_slurmrestd,
    pull_window,
)
from tests.integration.slurm_harness import JobRun, expected_records

XDMOD = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "slurm" / "xdmod"
OWN = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
RECORD_KEYS = set(
    "record_id enterprise_uscc resource unit quantity started_at ended_at amount currency "
    "metadata".split()
)
REASONS = set(
    "step_row array_placeholder not_ended never_started revoked zero_duration no_allocation "
    "unmapped_tenant no_price duplicate_row bad_row".split()
)


def make_uscc(n: int) -> str:
    body = f"91330402MA{n:07d}"
    return body + uscc_mod.calc_check_digit(body)


TENANTS = {
    name: make_uscc(i)
    for i, name in enumerate(
        ["anon", "dspumpkins", "anonacct", "ccr", "chaff", "taifl", "aytinis", "ent-a", "ent-b"]
    )
}
PRICES = {"gpu": 800, "gpu.a100": 1200, "cpu": 5}


def make_config(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "provider_id": "jx-hpc",
        "type": "sacct",
        "cluster": "jx-hpc",
        "settings": {},
        "tenants": dict(TENANTS),
        "prices": dict(PRICES),
    }
    fields.update(overrides)
    return ProviderConfig(**fields)


@pytest.fixture
def config() -> ProviderConfig:
    return make_config()


@pytest.fixture(scope="module")
def xdmod() -> Path:
    if not XDMOD.is_dir():
        pytest.skip(f"shared fixtures not present at {XDMOD}")
    return XDMOD


def short_row(
    job: str = "100",
    account: str = "ent-a",
    tres: str = "billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2,node=1",
    start: str = "2026-10-01T08:00:00",
    end: str = "2026-10-01T09:30:00",
    state: str = "COMPLETED",
    elapsed: str = "5400",
) -> str:
    return f"{job}|{account}|alice|gpu|{tres}|{elapsed}|{start}|{end}|{state}"


def assert_valid_record(record: dict[str, Any]) -> None:
    assert set(record) == RECORD_KEYS
    assert uscc_mod.is_valid(record["enterprise_uscc"])
    assert re.fullmatch(r"\d+(\.\d{1,6})?", record["quantity"])
    assert record["unit"] in ("gpu_hour", "core_hour")
    for key in ("started_at", "ended_at"):
        assert datetime.fromisoformat(record[key]).utcoffset() is not None
    assert record["ended_at"] > record["started_at"]
    assert isinstance(record["amount"], int) and record["amount"] >= 0
    assert record["currency"] == "CNY"
    assert set(record["metadata"]) == {"job_id", "partition", "user", "cluster", "state"}


# --- the Open XDMoD fixtures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "records", "skipped"),
    [
        ("phillips.log", 4024, {"zero_duration": 261}),
        ("accounting-logs.log", 3, {"zero_duration": 1}),
        ("accounting-logs-with-job-arrays.log", 1, {"array_placeholder": 5}),
        ("non-ended-job-state.log", 0, {"not_ended": 2}),
    ],
)
def test_every_xdmod_line_becomes_a_record_or_a_reasoned_skip(
    xdmod, config, name, records, skipped
):
    text = (xdmod / name).read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    out = parse_sacct(text, config)
    assert len(out.records) + len(out.skipped) == len(lines)
    assert len(out.records) == records
    assert dict(out.skipped_by_reason()) == skipped
    assert {s.reason for s in out.skipped} <= REASONS
    assert len({r["record_id"] for r in out.records}) == len(out.records)
    for record in out.records:
        assert_valid_record(record)
        assert record["amount"] == amount_for(
            Decimal(record["quantity"]),
            PRICES["gpu"] if record["unit"] == "gpu_hour" else PRICES["cpu"],
        )


def test_xdmod_field_list_is_detected_from_26_columns(xdmod, config):
    text = (xdmod / "accounting-logs.log").read_text()
    assert parse_sacct(text, config).records == parse_sacct(text, config, XDMOD_FIELDS).records


def test_phillips_core_hours_match_its_elapsed_column(xdmod, config):
    """Independent check over 4,000 real rows: NCPUS × Elapsed (D-HH:MM:SS) per CPU job."""

    def seconds(elapsed: str) -> int:
        days, _, hms = elapsed.rpartition("-")
        h, m, s = (int(x) for x in hms.split(":"))
        return int(days or 0) * 86400 + h * 3600 + m * 60 + s

    text = (xdmod / "phillips.log").read_text()
    want: dict[str, Decimal] = {}
    for line in text.splitlines():
        row = dict(zip(XDMOD_FIELDS, line.split("|"), strict=True))
        if "gres/gpu" in row["alloctres"] or seconds(row["elapsed"]) == 0:
            continue
        hours = Decimal(int(row["ncpus"]) * seconds(row["elapsed"])) / 3600
        want[row["jobidraw"]] = hours.quantize(Decimal("0.000001"), ROUND_HALF_UP)
    got = {
        r["metadata"]["job_id"]: Decimal(r["quantity"])
        for r in parse_sacct(text, config).records
        if r["unit"] == "core_hour"
    }
    assert got == want


def test_gpus_come_from_alloc_tres_not_req_tres(xdmod, config):
    # Job 163485 asked for cpu=12 only (ReqTRES) but was allocated gres/gpu=2.
    line = next(
        line
        for line in (xdmod / "phillips.log").read_text().splitlines()
        if line.startswith("163485|")
    )
    (record,) = parse_sacct(line, config).records
    assert record["resource"] == "gpu"
    assert record["unit"] == "gpu_hour"
    assert record["quantity"] == "506.903333"  # 2 × 10-13:27:06
    assert record["amount"] == 405523  # round_half_up(506.903333 × 800)
    start = int(datetime(2016, 12, 22, 7, 15, 13, tzinfo=UTC).timestamp())
    assert record["record_id"] == f"jx-hpc:163485:{start}"
    assert record["started_at"] == "2016-12-22T07:15:13+00:00"
    assert record["metadata"] == {
        "job_id": "163485",
        "partition": "focaccia",
        "user": "noror",
        "cluster": "jx-hpc",
        "state": "CANCELLED",
    }


def load_alloc_tres_cases() -> list[tuple[str, int]]:
    path = XDMOD / "alloc-tres-gpu-count.json"
    return [tuple(case) for case in json.loads(path.read_text())] if path.exists() else []


@pytest.mark.parametrize(("tres", "gpus"), load_alloc_tres_cases())
def test_alloc_tres_gpu_count_matches_xdmod_expectation(xdmod, tres, gpus):
    assert gpu_allocation(tres).count == gpus


def test_alloc_tres_gpu_fixture_is_read(xdmod):
    assert len(load_alloc_tres_cases()) == 9


def test_array_placeholders_are_skipped_and_tasks_billed(xdmod, config):
    out = parse_sacct((xdmod / "accounting-logs-with-job-arrays.log").read_text(), config)
    assert [s.line for s in out.skipped if s.reason == "array_placeholder"] == [2, 3, 4, 5, 6]
    (record,) = out.records
    assert record["quantity"] == "18432"  # 256 CPUs (NCPUS: no AllocTRES on this row) × 72 h


def test_jobs_that_have_not_ended_are_not_billed(xdmod, config):
    out = parse_sacct((xdmod / "non-ended-job-state.log").read_text(), config)
    assert out.records == []
    assert [s.detail for s in out.skipped] == ["job 3451067: RUNNING", "job 3483276: PENDING"]


# --- AllocTRES --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tres", "count", "resource"),
    [
        ("gres/gpu=4,gres/gpu:a100=4", 4, "gpu.a100"),
        ("billing=1,cpu=1,gres/gpu:a100=3,gres/gpu=3,node=1", 3, "gpu.a100"),
        ("gres/gpu:a100=2,gres/gpu:v100=2,gres/gpu=4", 4, "gpu"),
        ("gres/gpu:a100=2,gres/gpu:v100=2", 4, "gpu"),
        ("gres/gpu=4,gres/gpu:a100=2", 4, "gpu"),  # two of the four of an untracked type
        ("gres/gpu:H800=8", 8, "gpu.h800"),
        ("cpu=8,gres/gpumem=80G,gres/shard=2,gres/gpu=1", 1, "gpu"),
        ("cpu=8,mem=4G", 0, "gpu"),
    ],
)
def test_typed_and_untyped_gpus_count_once(tres, count, resource):
    gpus = gpu_allocation(tres)
    assert (gpus.count, gpus.resource) == (count, resource)


def test_most_specific_price_applies_to_typed_gpus(config):
    (a100,) = parse_sacct(short_row(), config).records
    assert (a100["resource"], a100["quantity"], a100["amount"]) == ("gpu.a100", "3", 3600)
    untyped = short_row(tres="cpu=1,gres/gpu=2")
    (gpu,) = parse_sacct(untyped, config).records
    assert (gpu["resource"], gpu["amount"]) == ("gpu", 2400)


def test_cpu_job_bills_core_hours(config):
    (record,) = parse_sacct(short_row(tres="billing=4,cpu=4,mem=8G,node=1"), config).records
    assert (record["resource"], record["unit"], record["quantity"]) == ("cpu", "core_hour", "6")
    assert record["amount"] == 30


# --- rows that give no record -----------------------------------------------------------------


def test_step_rows_never_double_count(config):
    text = "\n".join(
        [
            short_row("200"),
            short_row("200.batch", tres="cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=0,node=1"),
            short_row("200.extern", tres="cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=0,node=1"),
            short_row("200.0", tres="cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=0,node=1"),
        ]
    )
    out = parse_sacct(text, config)
    assert [r["quantity"] for r in out.records] == ["3"]
    assert out.skipped_by_reason() == Counter(step_row=3)


def test_requeued_runs_of_one_job_get_distinct_record_ids(config):
    text = "\n".join(
        [
            short_row(
                "300", start="2026-10-01T08:00:00", end="2026-10-01T08:30:00", state="REQUEUED"
            ),
            short_row("300", start="2026-10-01T08:40:00", end="2026-10-01T09:40:00"),
        ]
    )
    first, second = parse_sacct(text, config).records
    assert first["record_id"] == "jx-hpc:300:1790841600"
    assert second["record_id"] == "jx-hpc:300:1790844000"
    assert (first["quantity"], second["quantity"]) == ("1", "2")


def test_same_row_twice_is_one_record(config):
    out = parse_sacct(short_row() + "\n" + short_row(), config)
    assert len(out.records) == 1
    assert out.skipped_by_reason() == Counter(duplicate_row=1)


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "REQUEUE_HOLD"])
def test_unfinished_states_are_not_ended(config, state):
    out = parse_sacct(short_row(state=state), config)
    assert out.records == [] and out.skipped_by_reason() == Counter(not_ended=1)


def test_running_job_without_end_is_not_ended(config):
    out = parse_sacct(short_row(end="Unknown", state="RUNNING"), config)
    assert out.skipped_by_reason() == Counter(not_ended=1)


def test_job_cancelled_before_start_is_never_started_or_zero_duration(config):
    never = short_row(start="None", end="2026-10-01T09:00:00", state="CANCELLED by 0")
    zero = short_row(start="2026-10-01T09:00:00", end="2026-10-01T09:00:00", state="CANCELLED")
    out = parse_sacct(never + "\n" + zero, config)
    assert [s.reason for s in out.skipped] == ["never_started", "zero_duration"]


def test_unmapped_account_is_skipped_with_its_name(config):
    out = parse_sacct(short_row(account="lab-x"), config)
    (skip,) = out.skipped
    assert (skip.reason, skip.tenant, skip.line) == ("unmapped_tenant", "lab-x", 1)
    assert out.unmapped_tenants() == {"lab-x"}


def test_resource_without_price_is_skipped():
    config = make_config(prices={"cpu": 5})
    out = parse_sacct(short_row(), config)
    assert [(s.reason, s.tenant) for s in out.skipped] == [("no_price", "ent-a")]


def test_job_without_gpus_or_cpus_is_no_allocation(config):
    out = parse_sacct(short_row(tres="node=1"), config)
    assert out.skipped_by_reason() == Counter(no_allocation=1)


@pytest.mark.parametrize(
    "line",
    [
        "100|ent-a|alice",  # too few columns for the 9-column list
        short_row(start="yesterday"),
        short_row(tres="cpu=one"),
        short_row(tres="garbage"),
        short_row(start="2026-10-01T10:00:00", end="2026-10-01T09:00:00"),
    ],
)
def test_malformed_rows_are_bad_rows_not_exceptions(config, line):
    out = parse_sacct(short_row() + "\n" + line, config, SHORT_FIELDS)
    assert len(out.records) == 1
    assert [(s.reason, s.line) for s in out.skipped] == [("bad_row", 2)]


def test_unrecognisable_column_count_is_an_error(config):
    with pytest.raises(SacctFormatError):
        parse_sacct("1|2|3", config)


def test_header_line_gives_the_field_list(config):
    header = "JobID|JobIDRaw|State|Start|End|AllocTRES|Account|User|Partition"
    row = "55_2|57|COMPLETED|2026-10-01T08:00:00|2026-10-01T09:00:00|cpu=2|ent-a|bob|cpu"
    (record,) = parse_sacct(header + "\n" + row, config).records
    assert record["record_id"].startswith("jx-hpc:57:")
    assert record["quantity"] == "2"


def test_header_line_matching_given_fields_is_not_a_row(config):
    header = "|".join(SHORT_FIELDS)
    out = parse_sacct(header + "\n" + short_row(), config, SHORT_FIELDS)
    assert len(out.records) == 1 and out.skipped == []


def test_pipe_in_job_name_of_xdmod_rows_is_kept_in_the_name(xdmod, config):
    line = (xdmod / "accounting-logs.log").read_text().splitlines()[2] + "|with|pipes"
    assert len(parse_sacct(line, config).records) == 1


def test_blank_lines_are_ignored(config):
    out = parse_sacct("\n" + short_row() + "\n\n", config)
    assert len(out.records) == 1 and out.skipped == []


# --- times, rounding --------------------------------------------------------------------------


def test_times_are_read_in_the_provider_timezone():
    config = make_config(timezone="Asia/Shanghai")
    row = short_row(start="2026-10-01T16:00:00", end="2026-10-01T17:00:00")
    (record,) = parse_sacct(row, config).records
    assert record["started_at"] == "2026-10-01T08:00:00+00:00"
    assert record["ended_at"] == "2026-10-01T09:00:00+00:00"
    assert record["record_id"] == "jx-hpc:100:1790841600"
    # the adapter's own sacct runs with TZ=UTC and says so
    (utc,) = parse_sacct(row, config, timezone="UTC").records
    assert utc["started_at"] == "2026-10-01T16:00:00+00:00"


def test_quantity_is_rounded_half_up_to_six_decimals(config):
    row = short_row(tres="cpu=1,gres/gpu=1", start="2026-10-01T08:00:00", end="2026-10-01T08:00:01")
    (record,) = parse_sacct(row, config).records
    assert record["quantity"] == "0.000278"  # 1/3600 = 0.0002777…
    assert record["amount"] == 0  # round_half_up(0.000278 × 800 = 0.2224)


@given(
    gpus=st.integers(min_value=1, max_value=64),
    seconds=st.integers(min_value=1, max_value=40 * 86400),
    price=st.integers(min_value=0, max_value=100_000),
)
def test_amount_is_priced_from_the_rounded_quantity(gpus, seconds, price):
    config = make_config(prices={"gpu": price})
    start = datetime(2026, 10, 1, tzinfo=UTC)
    end = start + timedelta(seconds=seconds)
    row = short_row(
        tres=f"cpu=1,gres/gpu={gpus}",
        start=start.strftime("%Y-%m-%dT%H:%M:%S"),
        end=end.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    (record,) = parse_sacct(row, config).records
    quantity = (Decimal(gpus * seconds) / 3600).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    assert Decimal(record["quantity"]) == quantity
    assert record["amount"] == int((quantity * price).quantize(Decimal(1), ROUND_HALF_UP))


# --- our own cluster's capture ----------------------------------------------------------------


def own_expectations() -> dict[str, Any]:
    return json.loads((OWN / "own-cluster.expected.json").read_text())


def test_own_cluster_capture_gives_the_expected_records(config):
    facts = own_expectations()
    runs = [JobRun(**r) for r in facts["runs"]]
    cfg = make_config(cluster="cvtest")
    out = parse_sacct((OWN / "own-cluster.sacct").read_text(), cfg)
    keys = RECORD_KEYS - {"metadata"}
    got = sorted(({k: r[k] for k in keys} for r in out.records), key=lambda r: r["record_id"])
    assert got == sorted(expected_records(runs, cfg), key=lambda r: r["record_id"])
    gpu_seconds = sum(r.unit_seconds for r in runs if r.gpus)
    gpu_hours = sum(Decimal(r["quantity"]) for r in out.records if r["unit"] == "gpu_hour")
    assert gpu_hours == sum(r.quantity for r in runs if r.gpus)
    assert round(gpu_hours * 3600) == gpu_seconds
    skipped = {s.detail.split(":")[0].removeprefix("job "): s.reason for s in out.skipped}
    assert skipped == (
        {j: "unmapped_tenant" for j in facts["unmapped"]}
        | {j: "not_ended" for j in facts["not_ended"]}
        | {j: "zero_duration" for j in facts["zero_duration"]}
    )


def test_own_cluster_steps_capture_bills_like_allocations_only(config):
    cfg = make_config(cluster="cvtest")
    allocations = parse_sacct((OWN / "own-cluster.sacct").read_text(), cfg)
    steps_text = (OWN / "own-cluster-steps.sacct").read_text()
    with_steps = parse_sacct(steps_text, cfg)
    assert with_steps.records == allocations.records
    step_lines = [line for line in steps_text.splitlines() if "." in line.split("|")[0]]
    assert with_steps.skipped_by_reason()["step_row"] == len(step_lines) > 0


def test_own_cluster_requeued_job_has_two_records(config):
    facts = own_expectations()
    cfg = make_config(cluster="cvtest")
    out = parse_sacct((OWN / "own-cluster.sacct").read_text(), cfg)
    requeued = facts["job_ids"]["requeue"]
    runs = [r for r in out.records if r["metadata"]["job_id"] == requeued]
    assert [r["metadata"]["state"] for r in runs] == ["REQUEUED", "COMPLETED"]
    assert len({r["record_id"] for r in runs}) == 2


def test_own_cluster_slurmrestd_capture_gives_the_same_records_as_sacct():
    """Real slurmrestd v0.0.38 JSON, captured beside own-cluster.sacct from the same jobs."""
    cfg = make_config(cluster="cvtest")
    body = json.loads((OWN / "own-cluster.slurmrestd-v0.0.38.json").read_text())
    from_restd = parse_slurmrestd(body, cfg)
    from_sacct = parse_sacct((OWN / "own-cluster.sacct").read_text(), cfg)

    def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: r["record_id"])

    assert by_id(from_restd.records) == by_id(from_sacct.records)
    # the pending array is one `_[...]` row in both; JSON says so, the short sacct list cannot
    assert from_restd.skipped_by_reason() == Counter(
        not_ended=2, array_placeholder=1, unmapped_tenant=1, zero_duration=1
    )
    assert from_sacct.skipped_by_reason() == Counter(
        not_ended=3, unmapped_tenant=1, zero_duration=1
    )


# --- slurmrestd -------------------------------------------------------------------------------


def restd_job(version: str, **over: Any) -> dict[str, Any]:
    """A finished 2×A100 job, 90 minutes, in the shape slurmrestd `version` dumps it."""
    start, end = 1790841600, 1790847000  # 2026-10-01T08:00:00Z + 1.5 h
    number = (
        (lambda n: {"set": True, "infinite": False, "number": n})
        if version == "v0.0.40"
        else (lambda n: n)
    )
    job: dict[str, Any] = {
        "account": "ent-a",
        "cluster": "jx-hpc",
        "job_id": 100,
        "partition": "gpu",
        "user": "alice",
        "array": {"job_id": 0, "task_id": None, "task": None},
        "state": {
            "current": "COMPLETED" if version == "v0.0.38" else ["COMPLETED"],
            "reason": "None",
        },
        "time": {
            "start": number(start),
            "end": number(end),
            "elapsed": end - start,
            "submission": number(start - 60),
        },
        "tres": {
            "allocated": [
                {"type": "cpu", "name": None if version == "v0.0.38" else "", "id": 1, "count": 1},
                {"type": "gres", "name": "gpu", "id": 1001, "count": 2},
                {"type": "gres", "name": "gpu:a100", "id": 1002, "count": 2},
                {"type": "node", "name": "", "id": 4, "count": 1},
            ],
            "requested": [{"type": "cpu", "name": "", "id": 1, "count": 1}],
        },
        "steps": [
            {
                "step": {"id": "100.batch", "name": "batch"},
                "tres": {"allocated": [{"type": "gres", "name": "gpu", "count": 2}]},
            },
        ],
    }
    if version == "v0.0.40":
        job["array"]["task_id"] = {"set": False, "infinite": False, "number": 0}
    job.update(over)
    return job


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.39", "v0.0.40"])
def test_slurmrestd_job_gives_the_same_record_as_sacct(config, version):
    body = {"meta": {}, "errors": [], "jobs": [restd_job(version)]}
    (from_restd,) = parse_slurmrestd(body, config).records
    (from_sacct,) = parse_sacct(short_row(), config).records
    from_sacct["metadata"]["user"] = "alice"
    assert from_restd == from_sacct
    assert from_restd["quantity"] == "3"


def test_slurmrestd_skips_what_sacct_skips(config):
    jobs = [
        restd_job(
            "v0.0.39",
            job_id=1,
            state={"current": ["RUNNING"]},
            time={"start": 1790841600, "end": 0},
        ),
        restd_job(
            "v0.0.38",
            job_id=2,
            state={"current": "PENDING"},
            array={"job_id": 2, "task_id": None, "task": "1-3"},
        ),
        restd_job("v0.0.40", job_id=3, account="lab-x"),
        restd_job(
            "v0.0.39",
            job_id=4,
            time={"start": 0, "end": 1790847000},
            state={"current": ["CANCELLED"]},
        ),
        restd_job("v0.0.39", job_id=5, time={"start": 1790841600, "end": 1790841600}),
        restd_job("v0.0.39", job_id=None),
        "not a job",
    ]
    out = parse_slurmrestd({"jobs": jobs}, config)
    assert out.records == []
    assert [s.reason for s in out.skipped] == [
        "not_ended",
        "array_placeholder",
        "unmapped_tenant",
        "never_started",
        "zero_duration",
        "bad_row",
        "bad_row",
    ]


def test_slurmrestd_array_task_and_requeue_are_distinct(config):
    task = restd_job(
        "v0.0.40",
        job_id=4103950,
        array={"job_id": 4103947, "task_id": {"set": True, "number": 1}, "task": None},
    )
    rerun = restd_job("v0.0.39", time={"start": 1790850000, "end": 1790853600})
    out = parse_slurmrestd([restd_job("v0.0.39"), task, rerun], config)
    assert [r["record_id"] for r in out.records] == [
        "jx-hpc:100:1790841600",
        "jx-hpc:4103950:1790841600",
        "jx-hpc:100:1790850000",
    ]


# --- the pulling adapters ---------------------------------------------------------------------


class FakeRun:
    def __init__(self, stdout: str = "", returncode: int = 0, stderr: str = "") -> None:
        self.result = subprocess.CompletedProcess([], returncode, stdout, stderr)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((cmd, kwargs))
        return self.result


def test_sacct_adapter_runs_sacct_in_utc_with_duplicates(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    config = make_config(
        timezone="Asia/Shanghai", settings={"slurm_conf": "/etc/slurm-jx/slurm.conf"}
    )
    run = FakeRun(stdout=short_row() + "\n")
    start = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
    out = SacctAdapter(config, runner=run).extract(start, start + timedelta(hours=1))
    ((cmd, kwargs),) = run.calls
    assert cmd == [
        "sacct",
        "-a",
        "-P",
        "-X",
        "--noheader",
        "--duplicates",
        "--format=JobIDRaw,Account,User,Partition,AllocTRES,ElapsedRaw,Start,End,State",
        "-S",
        "2026-10-01T08:00:00",
        "-E",
        "2026-10-01T09:00:00",
    ]
    assert kwargs["env"]["TZ"] == "UTC"
    assert kwargs["env"]["SLURM_CONF"] == "/etc/slurm-jx/slurm.conf"
    # TZ=UTC output is read as UTC even though the provider's timezone is Asia/Shanghai
    assert out.records[0]["started_at"] == "2026-10-01T08:00:00+00:00"


def test_sacct_adapter_failure_raises_with_sacct_message(config):
    run = FakeRun(returncode=1, stderr="sacct: error: Problem talking to the database")
    with pytest.raises(SlurmError, match="Problem talking to the database"):
        SacctAdapter(config, runner=run).extract(
            datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)
        )


def test_sacct_adapter_missing_binary_raises(config):
    config = make_config(settings={"sacct": "/nonexistent/sacct"})
    with pytest.raises(SlurmError, match="/nonexistent/sacct"):
        SacctAdapter(config).extract(
            datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)
        )


class FakeResponse:
    def __init__(self, body: Any, status: int = 200) -> None:
        self.body, self.status_code = body, status
        self.text = json.dumps(body)

    def json(self) -> Any:
        return self.body


class FakeSession:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        self.calls.append((url, kwargs))
        return self.response


def restd_config(**settings: Any) -> ProviderConfig:
    base = {"url": "http://slurm-rest:6820/", "token_env": "JX_SLURM_TOKEN"}
    return make_config(type="slurmrestd", settings=base | settings)


def test_slurmrestd_adapter_sends_token_and_epoch_window(monkeypatch):
    monkeypatch.setenv("JX_SLURM_TOKEN", "jwt-abc")
    session = FakeSession(FakeResponse({"errors": [], "jobs": [restd_job("v0.0.39")]}))
    adapter = SlurmrestdAdapter(restd_config(user_name="svc-voucher"), session=session)
    start = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
    out = adapter.extract(start, start + timedelta(days=1))
    ((url, kwargs),) = session.calls
    assert url == "http://slurm-rest:6820/slurmdb/v0.0.39/jobs"
    assert kwargs["headers"]["X-SLURM-USER-TOKEN"] == "jwt-abc"
    assert kwargs["headers"]["X-SLURM-USER-NAME"] == "svc-voucher"
    assert kwargs["params"] == {"start_time": "uts1790841600", "end_time": "uts1790928000"}
    assert [r["quantity"] for r in out.records] == ["3"]


def test_slurmrestd_api_version_is_configurable(monkeypatch):
    monkeypatch.setenv("JX_SLURM_TOKEN", "t")
    adapter = SlurmrestdAdapter(restd_config(api_version="v0.0.40"))
    assert adapter.url() == "http://slurm-rest:6820/slurmdb/v0.0.40/jobs"


def test_slurmrestd_errors_raise(monkeypatch):
    monkeypatch.setenv("JX_SLURM_TOKEN", "t")
    window = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC))
    body = {"errors": [{"error": "Unable to query", "error_number": 9000}], "jobs": []}
    with pytest.raises(SlurmError, match="Unable to query"):
        SlurmrestdAdapter(restd_config(), session=FakeSession(FakeResponse(body))).extract(*window)
    with pytest.raises(SlurmError, match="HTTP 401"):
        SlurmrestdAdapter(restd_config(), session=FakeSession(FakeResponse({}, 401))).extract(
            *window
        )


def test_slurmrestd_missing_token_is_a_config_error(monkeypatch):
    monkeypatch.delenv("JX_SLURM_TOKEN", raising=False)
    adapter = SlurmrestdAdapter(restd_config(), session=FakeSession(FakeResponse({"jobs": []})))
    with pytest.raises(ConfigError, match="JX_SLURM_TOKEN"):
        adapter.extract(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC))


def test_slurmrestd_without_url_is_a_config_error():
    with pytest.raises(ConfigError, match="url"):
        SlurmrestdAdapter(make_config(type="slurmrestd"))


# --- pull windows -----------------------------------------------------------------------------


def test_pull_window_overlaps_the_previous_one():
    now = datetime(2026, 10, 2, 8, 0, tzinfo=UTC)
    last_end = datetime(2026, 10, 2, 7, 45, tzinfo=UTC)
    assert pull_window(last_end, now) == (datetime(2026, 10, 1, 7, 45, tzinfo=UTC), now)
    assert pull_window(last_end, now, overlap=timedelta(hours=2))[0] == datetime(
        2026, 10, 2, 5, 45, tzinfo=UTC
    )


def test_first_pull_reaches_back_and_naive_times_are_refused():
    now = datetime(2026, 10, 2, 8, 0, tzinfo=UTC)
    assert pull_window(None, now)[0] == now - timedelta(days=31)
    with pytest.raises(ValueError):
        pull_window(None, datetime(2026, 10, 2, 8, 0))


def test_overlapping_pulls_give_the_same_record_ids(config):
    text = "\n".join(short_row(str(n)) for n in range(1, 4))
    first = {r["record_id"] for r in parse_sacct(text, config).records}
    again = {r["record_id"] for r in parse_sacct(text.splitlines()[-1], config).records}
    assert again <= first
