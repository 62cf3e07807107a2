"""bench/events.py at toy size: the push path alone and beside the event clients, exact counts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.events import SCENARIOS, TINY, run_scenario
from tests.conftest import DEFAULT_PG, PG_URL

ADMIN = PG_URL or DEFAULT_PG


def quiet(*_args) -> None:
    pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_events_benchmark_measures_ingest_both_ways_and_counts_every_event(backend, tmp_path):
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("<!-- bench:events-tiny:start -->\nstale\n<!-- bench:events-tiny:end -->\n")
    params = replace(SCENARIOS["events-pg-200k"], backend=backend, **TINY)

    result = run_scenario("events-tiny", params, docs=True, results_dir=tmp_path, docs_path=docs,
                          admin=ADMIN, log=quiet)

    (run,) = result["runs"]
    assert run["checks"] == {"all_accepted": True, "stored_exact": True, "events_raised": True,
                             "outbox_has_every_event": True}
    assert run["alone"]["accepted"] == run["with_events"]["accepted"] == 2000
    assert run["events"]["written"] == run["events"]["caused"] > 0
    assert run["ratio"] == round(run["with_events"]["records_per_s"] / run["alone"]["records_per_s"], 3)
    assert result["targets"] == {}  # no targets at toy size
    saved = json.loads(Path(result["result_path"]).read_text())
    assert set(saved["median"]) == {"records_per_s_alone", "records_per_s_with_events", "events_per_s",
                                    "ratio"}
    text = docs.read_text()
    assert "stale" not in text and "| 2,000 | 250 | 2 | 1 |" in text
