"""Events: the push path's speed alone and while another process raises events at full speed.

Pushes write no audit entries, so the outbox (kernel/outbox.py: one event per audit entry, in
the entry's transaction) adds nothing to the push path by construction; this measures it. The
service runs under gunicorn on a fresh database. Each run pushes the same records twice (the
table emptied between): once alone, once while event clients (separate processes) raise
events through the API as fast as they can — redemption holds authorised then voided
(`redemption.authorized`, `redemption.voided`) and, every `reconcile_every` cycles, a
reconciliation of a month nobody pushes to (`reconciliation.completed`). The two pushes
alternate order from run to run.

Reported: ingest records/s alone and with events, their ratio (target ≥ 0.9: the push path
slows by at most 10 %), and the events/s written to the outbox meanwhile (rows of `event`
added while the event clients ran ÷ their seconds). Checks: every record accepted and stored
exactly both times; every event the clients caused is in the outbox, no more.

    python -m bench events                        # the standard scenario (updates the docs)
    python -m bench events --tiny --no-docs       # seconds; what the tests run
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    BenchDatabase,
    BenchFailure,
    Server,
    fmt_int,
    markdown_table,
    median,
    provenance_line,
    publish,
    run_meta,
    seed_registry,
)
from bench.ingest import _sql, drive, empty_table, generate, stored_totals, write_batches

QUIET_PERIOD = "2025-06"  # a month in the Jiaxing policy's window nobody pushes to


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"
    records: int = 200_000
    batch: int = 1000
    clients: int = 2
    event_clients: int = 1
    reconcile_every: int = 20  # authorise/void cycles per reconciliation
    workers: int = field(default_factory=lambda: (os.cpu_count() or 1) + 1)
    runs: int = 3
    enterprises: int = 500
    seed: int = 20261202
    min_ratio: float | None = None  # with events ÷ alone, reported beside the figure


SCENARIOS: dict[str, Params] = {
    # Issue 17: the push path must not slow by more than 10 % while the outbox carries events.
    "events-pg-200k": Params("postgresql", 200_000, 1000, clients=2, event_clients=1, min_ratio=0.9),
}

TINY = dict(records=2000, batch=250, clients=2, event_clients=1, workers=2, runs=1, enterprises=20,
            reconcile_every=5, min_ratio=None)


# --- the event clients ---------------------------------------------------------------------


def _events_client(url: str, provider_key: str, finance_key: str, uscc: str, tag: str,
                   reconcile_every: int, go, stop, out) -> None:
    """Authorise a small hold and void it, again and again (and now and then reconcile a quiet
    month) from `go` until `stop`; report the events caused and the seconds it ran."""
    session = requests.Session()
    prov = {"Authorization": f"Bearer {provider_key}"}
    fin = {"Authorization": f"Bearer {finance_key}"}
    session.get(f"{url}/healthz", timeout=30)
    period = datetime.now(UTC).strftime("%Y-%m")
    events = errors = cycles = 0
    go.wait()
    started = time.perf_counter()
    while not stop.is_set():
        cycles += 1
        r = session.post(f"{url}/v1/redemptions", headers=prov, timeout=60, json={
            "enterprise_uscc": uscc, "reference": f"{tag}-{cycles}", "list_amount": 200, "period": period})
        if r.status_code != 201:
            errors += 1
            continue
        events += 1
        v = session.post(f"{url}/v1/redemptions/{r.json()['id']}/void", headers=prov, timeout=60)
        events, errors = (events + 1, errors) if v.status_code == 200 else (events, errors + 1)
        if reconcile_every and cycles % reconcile_every == 0:
            rec = session.post(f"{url}/v1/reconciliations", headers=fin, timeout=60,
                               json={"period": QUIET_PERIOD})
            events, errors = (events + 1, errors) if rec.status_code in (200, 201) else (events, errors + 1)
    out.put({"seconds": time.perf_counter() - started, "events": events, "errors": errors,
             "cycles": cycles})


def outbox_rows(bdb: BenchDatabase) -> int:
    (count,), = _sql(bdb, "SELECT count(*) FROM event")
    return int(count)


def drive_with_events(bdb: BenchDatabase, url: str, keys: list[str], files: list[Path],
                      params: Params, provider_key: str, finance_key: str, usccs: list[str],
                      run: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """drive() while the event clients run; (ingest, events)."""
    ctx = mp.get_context("spawn")
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_events_client, daemon=True, args=(
        url, provider_key, finance_key, usccs[i % len(usccs)], f"bench-r{run}-c{i}",
        params.reconcile_every, go, stop, out)) for i in range(params.event_clients)]
    for p in procs:
        p.start()
    before = outbox_rows(bdb)
    time.sleep(1.0)  # the clients have warmed up and wait for `go`
    go.set()
    try:
        ingest = drive(url, keys, files)
    finally:
        stop.set()
    reports = []
    while len(reports) < len(procs):
        try:
            reports.append(out.get(timeout=60))
        except queue.Empty:
            for p in procs:
                p.terminate()
            raise RuntimeError("an event client did not report") from None
    for p in procs:
        p.join(60)
    written = outbox_rows(bdb) - before
    seconds = max(r["seconds"] for r in reports)
    events = {"caused": sum(r["events"] for r in reports), "errors": sum(r["errors"] for r in reports),
              "written": written, "seconds": round(seconds, 3),
              "events_per_s": round(written / seconds, 1) if seconds else 0.0}
    return ingest, events


# --- one scenario ----------------------------------------------------------------------------


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    with BenchDatabase.create(params.backend, admin) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-events-") as tmp:
        meta["database"] = bdb.server_version()
        seed = seed_registry(bdb.url, providers=params.clients + 1, enterprises=params.enterprises)
        pushers, redeemer = seed.providers[:params.clients], seed.providers[-1]
        data, expected = generate(params, pushers, seed.usccs, datetime.now(UTC))
        files = write_batches(data, Path(tmp))
        keys = [seed.keys[p] for p in pushers]
        log(f"[{name}] {params.records:,} records for {params.clients} client(s), "
            f"{params.event_clients} event client(s); {meta['database']}")
        with Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "gunicorn.log") as srv:
            for n in range(params.runs):
                got: dict[str, Any] = {}
                for phase in (("alone", "events") if n % 2 == 0 else ("events", "alone")):
                    empty_table(bdb)
                    if phase == "alone":
                        got["alone"] = drive(srv.url, keys, files)
                    else:
                        got["with_events"], got["events"] = drive_with_events(
                            bdb, srv.url, keys, files, params, seed.keys[redeemer], seed.finance_key,
                            seed.usccs, n)
                    stored = stored_totals(bdb)
                    ingest = got["alone" if phase == "alone" else "with_events"]
                    ingest["records_per_s"] = round(params.records / ingest["seconds"], 1)
                    ingest["stored_exact"] = stored == {"records": expected["records"],
                                                        "distinct": expected["records"],
                                                        "amount": expected["amount"]}
                alone, busy, events = got["alone"], got["with_events"], got["events"]
                checks = {
                    "all_accepted": all(i["accepted"] == params.records and i["http_errors"] == 0
                                        and i["rejected"] == i["duplicates"] == 0 for i in (alone, busy)),
                    "stored_exact": alone["stored_exact"] and busy["stored_exact"],
                    "events_raised": events["caused"] > 0 and events["errors"] == 0,
                    "outbox_has_every_event": events["written"] == events["caused"],
                }
                if not all(checks.values()):
                    raise BenchFailure(f"[{name}] run {n + 1}: {checks}; alone {alone}; with events "
                                       f"{busy}; events {events}")
                ratio = round(busy["records_per_s"] / alone["records_per_s"], 3)
                runs.append({"alone": alone, "with_events": busy, "events": events, "ratio": ratio,
                             "checks": checks, "load_avg_1min_before": round(os.getloadavg()[0], 2)})
                log(f"[{name}] run {n + 1}/{params.runs}: {fmt_int(alone['records_per_s'])} records/s "
                    f"alone, {fmt_int(busy['records_per_s'])} with {fmt_int(events['events_per_s'])} "
                    f"events/s; ratio {ratio}")
    summary = {
        "records_per_s_alone": round(median(r["alone"]["records_per_s"] for r in runs), 1),
        "records_per_s_with_events": round(median(r["with_events"]["records_per_s"] for r in runs), 1),
        "events_per_s": round(median(r["events"]["events_per_s"] for r in runs), 1),
        "ratio": round(median(r["ratio"] for r in runs), 3),
    }
    targets = {}
    if params.min_ratio is not None:
        targets["ratio"] = {"min": params.min_ratio, "met": summary["ratio"] >= params.min_ratio}
    result = {**meta, "params": asdict(params), "runs": runs, "median": summary, "targets": targets}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: {fmt_int(summary['records_per_s_alone'])} records/s alone, "
        f"{fmt_int(summary['records_per_s_with_events'])} with {fmt_int(summary['events_per_s'])} "
        f"events/s; ratio {summary['ratio']} -> {path}")
    return result


def render(result: dict[str, Any]) -> str:
    p, m = result["params"], result["median"]
    t = result["targets"].get("ratio")
    target = "—" if t is None else f"≥ {t['min']} {'✅' if t['met'] else '❌ not met'}"
    table = markdown_table(
        ["records", "batch", "push clients", "event clients", "gunicorn workers", "runs",
         "ingest records/s alone", "ingest records/s with events", "ratio", "ratio target",
         "events/s to the outbox"],
        [[f"{p['records']:,}", f"{p['batch']:,}", p["clients"], p["event_clients"], p["workers"],
          p["runs"], fmt_int(m["records_per_s_alone"]), fmt_int(m["records_per_s_with_events"]),
          f"{m['ratio']:.2f}", target, fmt_int(m["events_per_s"])]],
    )
    per_run = ", ".join(f"{fmt_int(r['alone']['records_per_s'])} vs {fmt_int(r['with_events']['records_per_s'])}"
                        for r in result["runs"])
    return (f"{table}\n\nRuns (records/s alone vs with events): {per_run}. Medians of the runs.\n"
            f"{provenance_line(result)}")
