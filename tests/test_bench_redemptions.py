"""The redemption-authorisation benchmark at toy size: wrk, real gunicorn, real PostgreSQL."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from bench.redemptions import SCENARIOS, TINY, run_scenario
from tests.conftest import DEFAULT_PG, PG_URL

ADMIN = PG_URL or DEFAULT_PG


def quiet(*_args) -> None:
    pass


def test_redemption_benchmark_measures_both_servers_and_the_ledger_holds(tmp_path):
    # wrk is a real component like Slurm: scripts/ensure-wrk.sh installs it before `make test`.
    assert shutil.which("wrk"), "run scripts/ensure-wrk.sh (make test does)"
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:redemptions-tiny:start -->\nstale\n"
                    "<!-- bench:redemptions-tiny:end -->\n")
    params = replace(SCENARIOS["redemptions-pg"], **TINY)

    result = run_scenario("redemptions-tiny", params, docs=True, results_dir=tmp_path, docs_path=docs,
                          admin=ADMIN, log=quiet)

    assert result["checks"] == {"hold_is_half": True, "replay_same_id": True, "bad_key_401": True,
                                "ledger_verified": True, "one_hold_per_answer": True,
                                "ceiling_wrote_nothing": True, "hold_floor_rows_per_answer": True,
                                "hold_floor_ledger_verified": True}
    (run,) = result["runs"]
    for side in ("authorisations", "reference", "write_floor", "hold_floor", "ceiling"):
        r = run[side]
        assert r["requests"] > 0 and r["non_2xx"] == 0 and r["socket_errors"] == 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["cpu"]["server_us"] > 0 and 0 < r["cpu"]["machine_busy_pct"] <= 100
    # The bare endpoint touches no database; everything else does.
    assert all(run[side]["cpu"]["postgres_us"] > 0
               for side in ("authorisations", "write_floor", "hold_floor", "ceiling"))
    assert run["ceiling_ratio"] == round(run["ceiling"]["requests_per_s"] / run["reference"]["requests_per_s"], 3)
    assert run["ratio"] == round(run["authorisations"]["requests_per_s"] / run["reference"]["requests_per_s"], 3)
    assert run["write_floor_ratio"] == round(run["write_floor"]["requests_per_s"]
                                             / run["reference"]["requests_per_s"], 3)
    assert result["targets"] == {}  # no targets at toy size
    assert SCENARIOS["redemptions-pg"].min_ratio == 0.4 and SCENARIOS["redemptions-pg"].max_p99_ms == 50.0
    saved = json.loads(Path(result["result_path"]).read_text())
    assert saved["median"]["ratio"] == run["ratio"]
    text = docs.read_text()
    assert "stale" not in text and "authorisations (service)" in text and "load tool `wrk`" in text
    assert all(part in text for part in ("Write floor", "Hold floor", "Ceiling", "CPU per request"))
