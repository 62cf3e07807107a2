"""The benchmark suite at toy size, so it cannot rot: real gunicorn, real databases, exact counts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from bench import common
from bench.__main__ import main as bench_main
from bench.common import libpq, percentile, update_docs
from bench.ingest import GPU_MODELS, SCENARIOS, TINY, Params, generate, run_scenario
from tests.conftest import DEFAULT_PG, PG_URL
from voucher.cli_demo import make_uscc

ADMIN = PG_URL or DEFAULT_PG


def quiet(*_args) -> None:
    pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ingest_benchmark_counts_every_record_exactly(backend, tmp_path):
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:ingest-tiny:start -->\nstale\n"
                    "<!-- bench:ingest-tiny:end -->\n\nafter\n")
    params = replace(SCENARIOS["ingest-pg-500k"], backend=backend, **TINY)

    result = run_scenario("ingest-tiny", params, docs=True, results_dir=tmp_path,
                          docs_path=docs, admin=ADMIN, log=quiet)

    (run,) = result["runs"]
    ingest, reference = run["ingest"], run["reference"]
    assert (ingest["accepted"], ingest["duplicates"], ingest["rejected"], ingest["http_errors"]) \
        == (2000, 0, 0, 0)
    assert ingest["batches"] == 2000 // 250
    assert run["checks"] == {"all_accepted": True, "stored_exact": True,
                             "replay_all_duplicates": True, "unchanged_after_replay": True}
    assert reference["records"] == 2000 and reference["seconds"] > 0
    assert run["ratio"] == round(ingest["records_per_s"] / reference["records_per_s"], 3)
    assert result["targets"] == {}  # no targets at toy size

    saved = json.loads(Path(result["result_path"]).read_text())
    assert Path(result["result_path"]).parent == tmp_path
    assert saved["benchmark"] == "ingest-tiny"
    assert {"cpus", "cpu_model", "ram_gib", "python"} <= saved["machine"].keys()
    assert saved["commit"] and datetime.fromisoformat(saved["date"]).tzinfo is not None
    assert saved["database"].startswith("PostgreSQL" if backend == "postgresql" else "SQLite")
    assert saved["params"]["records"] == 2000 and saved["params"]["clients"] == 2
    assert set(saved["median"]) == {"records_per_s", "reference_records_per_s", "ratio",
                                    "batch_p50_ms", "batch_p99_ms"}
    assert saved["median"]["records_per_s"] == ingest["records_per_s"]

    text = docs.read_text()
    assert "stale" not in text and text.endswith("after\n")
    assert "| 2,000 | 250 | 2 | 2 | 1 |" in text and saved["commit"] in text


def test_benchmark_databases_are_dropped(tmp_path):
    with common.BenchDatabase.create("postgresql", ADMIN) as bdb:
        name = bdb.name
        with psycopg.connect(libpq(ADMIN)) as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    with psycopg.connect(libpq(ADMIN)) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
            is None
    with common.BenchDatabase.create("sqlite") as bdb:
        path = bdb.name
    assert not Path(path).exists()


def test_runner_runs_one_scenario_by_name(tmp_path, capsys):
    assert bench_main(["ingest-sqlite-100k", "--tiny", "--results-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("ingest-sqlite-100k-tiny-*.json")
    assert json.loads(path.read_text())["runs"][0]["checks"]["stored_exact"] is True
    assert "median of 1" in capsys.readouterr().out


def test_runner_refuses_unknown_names():
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench_main(["no-such-benchmark", "--tiny"])


def test_generated_records_are_realistic_and_unique():
    usccs = [make_uscc(1000 + i) for i in range(50)]
    now = datetime(2026, 11, 1, tzinfo=UTC)
    params = Params(records=3001, batch=1000, clients=2)
    per_client, totals = generate(params, ["p1", "p2"], usccs, now)
    records = [r for batches in per_client for b in batches for r in b]
    assert [len(b) for b in per_client[0]] == [1000, 501] and len(records) == 3001
    assert len({r["record_id"] for r in records}) == 3001
    assert totals == {"records": 3001, "amount": sum(r["amount"] for r in records)}
    prices = {m: p for m, p, _ in GPU_MODELS}
    for r in records:
        started = datetime.fromisoformat(r["started_at"])
        ended = datetime.fromisoformat(r["ended_at"])
        assert now - timedelta(days=121) < ended < now and started < ended
        hours = Decimal((ended - started).total_seconds()) / 3600
        gpus = r["metadata"]["gpus"]
        assert Decimal(r["quantity"]) == (gpus * hours).quantize(Decimal("0.000001"))
        assert abs(r["amount"] - Decimal(r["quantity"]) * prices[r["resource"]]) <= Decimal("0.5")
    assert {r["resource"] for r in records} == set(prices)
    assert generate(params, ["p1", "p2"], usccs, now)[0] == per_client  # reproducible


def test_docs_sections_are_replaced_in_place_or_appended(tmp_path):
    docs = tmp_path / "B.md"
    docs.write_text("# B\n\n<!-- bench:a:start -->\nold a\n<!-- bench:a:end -->\n\ntext\n")
    update_docs("a", "new a", docs)
    update_docs("b", "new b", docs)
    update_docs("b", "newer b", docs)
    assert docs.read_text() == ("# B\n\n<!-- bench:a:start -->\nnew a\n<!-- bench:a:end -->\n\n"
                                "text\n\n<!-- bench:b:start -->\nnewer b\n<!-- bench:b:end -->\n")


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7.0], 99) == 7.0


def test_profiler_reports_where_a_push_spends_its_time(tmp_path, capsys):
    from bench.profile import main as profile_main

    assert profile_main(["--backend", "sqlite", "--records", "2000", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ingest_records" in out and "1,000 records in" in out
    assert (tmp_path / "profile-ingest-sqlite.html").stat().st_size > 0


def test_reconcile_benchmark_runs_the_cli_and_checks_its_figures(tmp_path):
    from bench import reconcile

    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:reconcile-tiny:start -->\nstale\n"
                    "<!-- bench:reconcile-tiny:end -->\n\nafter\n")
    base = {"median": {"seconds": 1000.0}, "date": "2026-11-29T00:00:00+00:00", "commit": "abc",
            "params": {"records": 1}}
    (tmp_path / "reconcile-base-20261129T000000Z.json").write_text(json.dumps(base))
    params = replace(reconcile.SCENARIOS["reconcile-pg-1m"], **reconcile.TINY)
    params = replace(params, max_seconds=600, max_rss_mb=2000, max_growth=12,
                     growth_base="reconcile-base")

    result = reconcile.run_scenario("reconcile-tiny", params, docs=True, results_dir=tmp_path,
                                    docs_path=docs, admin=ADMIN, log=quiet)

    assert all(result["checks"].values()) and len(result["checks"]) == 7
    assert len(result["runs"]) == len(result["reports"]) == 2
    summary = result["summary"]
    assert summary["claims"] == 150 and summary["by_status"]["submitted"] == 0
    assert summary["totals"]["reserved"] == summary["totals"]["payable"] > 0
    # every kind of fault the data plants is found
    assert {"invoice_amount_mismatch", "invoice_not_found", "invoice_claimed_twice",
            "usage_invoice_mismatch", "enterprise_not_eligible"} <= set(summary["discrepancies"])
    for run in result["runs"] + result["reports"]:
        assert run["seconds"] > 0 and 20 < run["peak_rss_mb"] < 2000
    assert result["growth"]["ratio"] == round(result["median"]["seconds"] / 1000.0, 2)
    assert {k: t["met"] for k, t in result["targets"].items()} == \
        {"seconds": True, "peak_rss_mb": True, "growth": True}

    saved = json.loads(Path(result["result_path"]).read_text())
    assert saved["benchmark"] == "reconcile-tiny" and saved["params"]["records"] == 3000
    assert saved["seeded"]["records"] == 3000 and saved["seeded"]["claims"] == 150
    text = docs.read_text()
    assert "stale" not in text and text.endswith("after\n")
    assert "| 3,000 | 150 / " in text and "✅" in text and saved["commit"] in text


def test_runner_lists_the_reconcile_scenarios(capsys):
    assert bench_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "reconcile-pg-100k" in out and "reconcile-pg-1m" in out
