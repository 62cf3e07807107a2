"""The quota look-up benchmark at toy size: both load tools, real gunicorn, real PostgreSQL."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench.common import BenchDatabase
from bench.quota import SCENARIOS, TINY, render, run_scenario, seed_quota
from tests.conftest import DEFAULT_PG, PG_URL

ADMIN = PG_URL or DEFAULT_PG


def quiet(*_args) -> None:
    pass


@pytest.mark.parametrize("tool", ["wrk", "python"])
def test_quota_benchmark_measures_both_servers_with_right_answers(tool, tmp_path):
    # wrk is a real component like Slurm: scripts/ensure-wrk.sh installs it before `make test`.
    assert tool != "wrk" or shutil.which("wrk"), "run scripts/ensure-wrk.sh (make test does)"
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:quota-tiny:start -->\nstale\n"
                    "<!-- bench:quota-tiny:end -->\n")
    params = replace(SCENARIOS["quota-pg"], **TINY, tool=tool)

    result = run_scenario("quota-tiny", params, docs=True, results_dir=tmp_path, docs_path=docs,
                          admin=ADMIN, log=quiet)

    assert result["tool"] == tool
    assert result["checks"] == {"answers_equal_ledger": True, "other_enterprise_404": True,
                                "bad_key_401": True}
    (run,) = result["runs"]
    for side in ("quota", "reference"):
        r = run[side]
        assert r["requests"] > 0 and r["non_2xx"] == 0 and r["socket_errors"] == 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert run["ratio"] == round(run["quota"]["requests_per_s"]
                                 / run["reference"]["requests_per_s"], 3)
    assert result["targets"] == {}  # no targets at toy size
    saved = json.loads(Path(result["result_path"]).read_text())
    assert saved["median"]["ratio"] == run["ratio"] and saved["params"]["tool"] == tool
    text = docs.read_text()
    assert "stale" not in text and "bare Flask JSON endpoint (reference)" in text
    assert f"load tool `{tool}`" in text


def test_seeded_balances_are_the_ledgers(tmp_path):
    with BenchDatabase.create("postgresql", ADMIN) as bdb:
        qs = seed_quota(bdb.url, 6, 2026)
        assert len(qs.pairs) == 6 and len({k for _u, k in qs.pairs}) == 6
        from billing import ledger
        from kernel.db import Database

        db = Database(bdb.url)
        try:
            with db.session() as session:
                assert ledger.verify(session).ok
        finally:
            db.dispose()
        for b in qs.balances.values():
            assert b["remaining"] == b["cap"] - b["reserved"] - b["granted"] and b["reserved"] >= 0


def test_render_marks_targets():
    base = {"params": {"connections": 32, "duration": 10, "runs": 3, "workers": 3, "threads": 2,
                       "enterprises": 2000},
            "median": {"requests_per_s": 1500.0, "p50_ms": 18.0, "p99_ms": 40.0,
                       "reference_requests_per_s": 2500.0, "reference_p50_ms": 11.0,
                       "reference_p99_ms": 30.0, "ratio": 0.6},
            "runs": [], "tool": "wrk", "commit": "abc", "date": "2026-11-29T00:00:00+00:00",
            "machine": {"cpus": 2, "cpu_model": "x", "ram_gib": 24, "python": "3.11"},
            "database": "PostgreSQL 15"}
    met = render({**base, "targets": {"ratio": {"min": 0.5, "met": True},
                                      "p99_ms": {"max": 50, "met": True}}})
    assert "**0.60** (target ≥ 0.5 ✅)" in met and "40.0 (target ≤ 50 ✅)" in met
    missed = render({**base, "targets": {"ratio": {"min": 0.7, "met": False}}})
    assert "❌ not met" in missed


def test_unmet_targets_name_minimums_and_maximums():
    from bench.common import unmet_targets

    result = {"median": {"ratio": 0.4, "p99_ms": 61.0, "seconds": 20.0},
              "targets": {"ratio": {"min": 0.5, "met": False}, "p99_ms": {"max": 50, "met": False},
                          "seconds": {"max": 60, "met": True}}}
    assert unmet_targets("quota-pg", result) == ["quota-pg: ratio 0.4 below 0.5",
                                                 "quota-pg: p99_ms 61.0 above 50"]
    assert unmet_targets("x", {"median": {}, "targets": {}}) == []


@pytest.mark.parametrize("scenario", ["quota-pg-no-balance", "quota-pg-one-key"])
def test_issue_14_scenarios_answer_right_without_balance_rows_and_with_one_key(scenario, tmp_path):
    params = replace(SCENARIOS[scenario], **TINY, tool="wrk" if shutil.which("wrk") else "python")
    result = run_scenario(f"{scenario}-tiny", params, docs=False, results_dir=tmp_path,
                          admin=ADMIN, log=quiet)
    assert all(result["checks"].values()), result["checks"]
    (run,) = result["runs"]
    assert run["quota"]["requests"] > 0 and run["quota"]["non_2xx"] == 0
    assert SCENARIOS[scenario].min_ratio == 0.5 and SCENARIOS[scenario].max_p99_ms == 50.0


def test_seed_without_balance_rows_expects_the_filings_cap(tmp_path):
    with BenchDatabase.create("postgresql", ADMIN) as bdb:
        qs = seed_quota(bdb.url, 8, 2026, balances=False)
        caps = [qs.balances[u]["cap"] for u, _k in qs.pairs]
        assert caps == [500_000_000 if n % 4 == 0 else 200_000_000 for n in range(8)]
        assert all(b["reserved"] == b["granted"] == 0 for b in qs.balances.values())
