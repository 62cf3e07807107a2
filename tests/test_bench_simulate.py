"""The simulation benchmark at toy size: a reconciled year on real PostgreSQL, `voucher simulate`
as a process of its own, the current policy reproducing the actual figures, nothing written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bench.simulate import SCENARIOS, TINY, run_scenario
from tests.conftest import DEFAULT_PG, PG_URL

ADMIN = PG_URL or DEFAULT_PG


def quiet(*_args) -> None:
    pass


def test_simulation_benchmark_replays_a_year_exactly_and_writes_nothing(tmp_path):
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:simulate-tiny:start -->\nstale\n"
                    "<!-- bench:simulate-tiny:end -->\n\nafter\n")
    params = replace(SCENARIOS["simulate-pg-1m"], **TINY)
    params = replace(params, max_seconds=600, max_rss_mb=2000)

    result = run_scenario("simulate-tiny", params, docs=True, results_dir=tmp_path, docs_path=docs,
                          admin=ADMIN, log=quiet)

    assert result["checks"] == {"current_policy_reproduces_actual": True, "runs_identical": True,
                                "rate_40_pays_less": True, "nothing_written": True}
    seeded = result["seeded"]
    assert seeded["records"] == 3_600 and seeded["claims"] == 240 and seeded["approved"] > 0
    (run,) = result["runs"]
    assert run["seconds"] > 0 and 20 < run["peak_rss_mb"] < 2000 and run["bytes"] > 0
    assert 0 < result["simulated"] < result["actual"]
    assert {k: t["met"] for k, t in result["targets"].items()} == {"seconds": True, "peak_rss_mb": True}
    saved = json.loads(Path(result["result_path"]).read_text())
    assert saved["benchmark"] == "simulate-tiny" and saved["params"]["records"] == 3_600
    text = docs.read_text()
    assert "stale" not in text and text.endswith("after\n")
    assert "| 3,600 | 240 (" in text and "✅" in text and saved["commit"] in text
