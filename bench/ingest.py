"""Ingestion: records/s pushing usage records to the real service, beside a raw-load reference.

The service runs under gunicorn on a fresh database. Client processes (not threads, not the
server's own process) push pre-serialised batches with `requests`, each as one provider, all
released at once; the wall time runs from the first request sent to the last answer read.
Afterwards the database must hold exactly the records pushed (count and amount sum), and a
replayed batch must come back as all duplicates.

Reference, measured in the same run on the same table: the rows the service stored are read
back, the table is emptied, and the same rows are loaded raw from Python in one transaction —
PostgreSQL: psycopg 3 `COPY usage_record (...) FROM STDIN` with `write_row`; SQLite: sqlite3
`executemany(INSERT ...)`. ratio = ingest records/s ÷ reference records/s.

    python -m bench.ingest                         # the standard scenarios (updates the docs)
    python -m bench.ingest --scenario ingest-pg-500k
    python -m bench.ingest --backend sqlite --records 20000 --clients 1 --runs 1
    python -m bench.ingest --tiny                  # seconds; what `make test` runs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    BenchDatabase,
    BenchFailure,
    Server,
    fmt_int,
    libpq,
    markdown_table,
    median,
    percentile,
    provenance_line,
    publish,
    run_meta,
    scenario_plan,
    seed_registry,
    unmet_targets,
)

COLUMNS = ("provider_id", "record_id", "enterprise_uscc", "resource", "unit", "quantity",
           "started_at", "ended_at", "period", "amount", "currency", "metadata", "content_hash",
           "status", "voided_at", "void_reason", "created_at")


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"
    records: int = 500_000
    batch: int = 1000
    clients: int = 4
    # gunicorn sync workers: CPUs + 1. On 2 cores, where PostgreSQL and the load clients share
    # the CPUs, 3 beat config/gunicorn.conf.py's default of 2 × CPUs (docs/BENCHMARKS.md).
    workers: int = field(default_factory=lambda: (os.cpu_count() or 1) + 1)
    runs: int = 3
    enterprises: int = 500
    seed: int = 20261015
    min_records_per_s: float | None = None  # acceptance targets, reported beside the figure
    min_ratio: float | None = None


SCENARIOS: dict[str, Params] = {
    # Issue 8: 500,000 records in batches of 1,000 from 4 concurrent clients, vs raw COPY.
    "ingest-pg-500k": Params("postgresql", 500_000, 1000, clients=4,
                             min_records_per_s=20_000, min_ratio=0.3),
    # Issue 2: 100,000 records in batches of 1,000, one provider pushing batch after batch.
    "ingest-pg-100k": Params("postgresql", 100_000, 1000, clients=1, min_records_per_s=10_000),
    "ingest-sqlite-100k": Params("sqlite", 100_000, 1000, clients=1),
}

# A seconds-long run that proves the machinery (what `make test` runs); no targets at this size.
TINY = dict(records=2000, batch=250, clients=2, workers=2, runs=1, enterprises=20,
            min_records_per_s=None, min_ratio=None)

# --- realistic data --------------------------------------------------------------------------

CST = timezone(timedelta(hours=8))
# (resource, fen per GPU-hour, weight): list prices of Jiaxing-area GPU rental in 2025-26.
GPU_MODELS = [("gpu.h800", 1800, 3), ("gpu.a100", 900, 4), ("gpu.910b", 650, 3)]
GPU_COUNTS = [1, 1, 2, 4, 8, 8, 8, 16, 32, 64]
PARTITIONS = {"gpu.h800": "h800", "gpu.a100": "a100", "gpu.910b": "ascend"}
SIX = Decimal("0.000001")


def generate(params: Params, providers: list[str], usccs: list[str], now: datetime
             ) -> tuple[list[list[list[dict[str, Any]]]], dict[str, Any]]:
    """Per client (one provider each), its batches of records; and the totals to check.

    Jobs of 1-64 GPUs on H800/A100/910B lasting 5 minutes to 3 days, ending in the last
    4 months, priced per GPU-hour in fen; a few enterprises push most of the usage.
    """
    rng = random.Random(params.seed)
    weights = [1 / (k + 1) for k in range(len(usccs))]  # Zipf-like: the big users dominate
    models = [m for m, _, _ in GPU_MODELS]
    price = {m: p for m, p, _ in GPU_MODELS}
    model_w = [w for _, _, w in GPU_MODELS]
    per_client: list[list[list[dict[str, Any]]]] = []
    total_amount = 0
    counts = [params.records // params.clients] * params.clients
    for i in range(params.records % params.clients):
        counts[i] += 1
    job = 4_100_000
    for c, pid in enumerate(providers):
        recs: list[dict[str, Any]] = []
        ents = rng.choices(usccs, weights, k=counts[c])
        mods = rng.choices(models, model_w, k=counts[c])
        for k in range(counts[c]):
            job += 1
            resource = mods[k]
            gpus = rng.choice(GPU_COUNTS)
            seconds = int(min(259_200, 300 + rng.expovariate(1 / 14_400)))
            ended = now - timedelta(seconds=rng.randrange(600, 120 * 86_400))
            ended = ended.replace(microsecond=0).astimezone(CST)
            quantity = (Decimal(gpus * seconds) / 3600).quantize(SIX, ROUND_HALF_UP)
            amount = int((quantity * price[resource]).to_integral_value(ROUND_HALF_UP))
            total_amount += amount
            recs.append({
                "record_id": f"{pid}-job-{job}",
                "enterprise_uscc": ents[k],
                "resource": resource,
                "unit": "gpu_hour",
                "quantity": str(quantity),
                "started_at": (ended - timedelta(seconds=seconds)).isoformat(),
                "ended_at": ended.isoformat(),
                "amount": amount,
                "currency": "CNY",
                "metadata": {"job_id": str(job), "partition": PARTITIONS[resource],
                             "gpus": gpus},
            })
        per_client.append([recs[i:i + params.batch] for i in range(0, len(recs), params.batch)])
    return per_client, {"records": params.records, "amount": total_amount}


def write_batches(data: list[list[list[dict[str, Any]]]], directory: Path) -> list[Path]:
    """One file per client: its batches pre-serialised as request bodies, one per line."""
    files = []
    for c, batches in enumerate(data):
        path = directory / f"client-{c}.jsonl"
        path.write_bytes(b"\n".join(
            json.dumps({"records": b}, ensure_ascii=False, separators=(",", ":")).encode()
            for b in batches))
        files.append(path)
    return files


# --- load from separate processes ------------------------------------------------------------


def _client(url: str, key: str, path: str, barrier, out) -> None:
    """One provider's pusher: its batches one after another through one requests.Session
    (gunicorn's sync workers close each connection, so it reconnects per batch)."""
    bodies = [line for line in Path(path).read_bytes().split(b"\n") if line]
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    session.get(f"{url}/healthz", timeout=30)  # connection warm-up; writes nothing
    latencies: list[float] = []
    counts = {"accepted": 0, "duplicates": 0, "rejected": 0, "http_errors": 0}
    barrier.wait()
    started = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        r = session.post(f"{url}/v1/usage-records", data=body, headers=headers, timeout=300)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            counts["http_errors"] += 1
            continue
        result = r.json()
        for name in ("accepted", "duplicates", "rejected"):
            counts[name] += result[name]
    finished = time.perf_counter()
    out.put({"started": started, "finished": finished, "latencies": latencies, **counts})


def drive(url: str, keys: list[str], files: list[Path]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(files))
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, key, str(path), barrier, out), daemon=True)
             for key, path in zip(keys, files, strict=True)]
    for p in procs:
        p.start()
    reports: list[dict[str, Any]] = []
    while len(reports) < len(procs):
        try:
            reports.append(out.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"load client exited with {dead[0]}") from None
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"load client exited with {p.exitcode}")
    seconds = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    totals = {k: sum(r[k] for r in reports) for k in ("accepted", "duplicates", "rejected",
                                                      "http_errors")}
    return {
        "seconds": round(seconds, 3),
        "batches": len(latencies),
        "batch_latency_ms": {"p50": round(percentile(latencies, 50) * 1000, 1),
                             "p99": round(percentile(latencies, 99) * 1000, 1),
                             "max": round(max(latencies) * 1000, 1)},
        **totals,
    }


# --- checks and the reference ----------------------------------------------------------------


def _sql(bdb: BenchDatabase, statement: str) -> list[tuple]:
    conn = bdb.connect()
    try:
        cur = conn.execute(statement)
        rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def empty_table(bdb: BenchDatabase) -> None:
    if bdb.backend == "postgresql":
        _sql(bdb, "TRUNCATE usage_record RESTART IDENTITY CASCADE")
        settle(bdb)
    else:
        _sql(bdb, "DELETE FROM usage_record")


def settle(bdb: BenchDatabase) -> None:
    """Flush dirty pages before a timed phase, so neither phase pays for the other's writes."""
    if bdb.backend != "postgresql":
        return
    import psycopg

    with psycopg.connect(libpq(bdb.url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def stored_totals(bdb: BenchDatabase) -> dict[str, int]:
    (count, distinct, amount), = _sql(
        bdb, "SELECT count(*), count(DISTINCT provider_id || '/' || record_id), "
             "coalesce(sum(amount), 0) FROM usage_record")
    return {"records": int(count), "distinct": int(distinct), "amount": int(amount)}


def reference_load(bdb: BenchDatabase) -> dict[str, Any]:
    """Read back what the service stored, empty the table, load the same rows raw; timed."""
    cols = ", ".join(COLUMNS)
    conn = bdb.connect()
    try:
        if bdb.backend == "postgresql":
            select_cols = cols.replace("metadata", "metadata::text")
            rows = conn.execute(f"SELECT {select_cols} FROM usage_record ORDER BY id").fetchall()
            conn.execute("TRUNCATE usage_record RESTART IDENTITY CASCADE")
            conn.commit()
            settle(bdb)
            t0 = time.perf_counter()
            with conn.cursor() as cur, cur.copy(f"COPY usage_record ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            seconds = time.perf_counter() - t0
            method = "psycopg 3 COPY usage_record FROM STDIN (write_row), one transaction"
        else:
            rows = conn.execute(f"SELECT {cols} FROM usage_record ORDER BY id").fetchall()
            conn.execute("DELETE FROM usage_record")
            conn.commit()
            marks = ", ".join("?" for _ in COLUMNS)
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO usage_record ({cols}) VALUES ({marks})", rows)
            conn.commit()
            seconds = time.perf_counter() - t0
            method = "sqlite3 executemany(INSERT INTO usage_record ...), one transaction"
    finally:
        conn.close()
    return {"method": method, "records": len(rows), "seconds": round(seconds, 3),
            "records_per_s": round(len(rows) / seconds, 1)}


def replay(url: str, key: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    r = requests.post(f"{url}/v1/usage-records", json={"records": batch},
                      headers={"Authorization": f"Bearer {key}"}, timeout=300)
    r.raise_for_status()
    body = r.json()
    return {k: body[k] for k in ("accepted", "duplicates", "rejected")}


# --- one scenario ----------------------------------------------------------------------------


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    with BenchDatabase.create(params.backend, admin) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-ingest-") as tmp:
        meta["database"] = bdb.server_version()
        seed = seed_registry(bdb.url, providers=params.clients, enterprises=params.enterprises)
        t0 = time.perf_counter()
        data, expected = generate(params, seed.providers, seed.usccs, datetime.now(UTC))
        files = write_batches(data, Path(tmp))
        log(f"[{name}] generated {params.records:,} records for {params.clients} client(s) "
            f"in {time.perf_counter() - t0:.1f} s; {meta['database']}")
        keys = [seed.keys[p] for p in seed.providers]
        with Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "gunicorn.log") as srv:
            for n in range(params.runs):
                empty_table(bdb)
                load_before = round(os.getloadavg()[0], 2)  # others' work skews the figures
                ingest = drive(srv.url, keys, files)
                ingest["records"] = params.records
                ingest["records_per_s"] = round(params.records / ingest["seconds"], 1)
                stored = stored_totals(bdb)
                again = replay(srv.url, keys[0], data[0][0])
                checks = {
                    "all_accepted": ingest["accepted"] == params.records
                    and ingest["rejected"] == ingest["duplicates"] == ingest["http_errors"] == 0,
                    "stored_exact": stored == {"records": expected["records"],
                                               "distinct": expected["records"],
                                               "amount": expected["amount"]},
                    "replay_all_duplicates": again == {"accepted": 0, "duplicates": len(data[0][0]),
                                                       "rejected": 0},
                    "unchanged_after_replay": stored_totals(bdb) == stored,
                }
                if not all(checks.values()):
                    raise BenchFailure(f"[{name}] run {n + 1}: {checks}; ingest {ingest}; "
                                       f"stored {stored}, expected {expected}; replay {again}")
                reference = reference_load(bdb)
                if reference["records"] != params.records:
                    raise BenchFailure(f"[{name}] reference loaded {reference['records']}")
                ratio = round(ingest["records_per_s"] / reference["records_per_s"], 3)
                runs.append({"ingest": ingest, "reference": reference, "ratio": ratio,
                             "checks": checks, "load_avg_1min_before": load_before})
                log(f"[{name}] run {n + 1}/{params.runs}: {fmt_int(ingest['records_per_s'])} "
                    f"records/s (p50 {ingest['batch_latency_ms']['p50']} ms, p99 "
                    f"{ingest['batch_latency_ms']['p99']} ms); reference "
                    f"{fmt_int(reference['records_per_s'])} records/s; ratio {ratio}")
    summary = {
        "records_per_s": round(median(r["ingest"]["records_per_s"] for r in runs), 1),
        "reference_records_per_s": round(median(r["reference"]["records_per_s"] for r in runs), 1),
        "ratio": round(median(r["ratio"] for r in runs), 3),
        "batch_p50_ms": median(r["ingest"]["batch_latency_ms"]["p50"] for r in runs),
        "batch_p99_ms": median(r["ingest"]["batch_latency_ms"]["p99"] for r in runs),
    }
    targets = {}
    if params.min_records_per_s is not None:
        targets["records_per_s"] = {"min": params.min_records_per_s,
                                    "met": summary["records_per_s"] >= params.min_records_per_s}
    if params.min_ratio is not None:
        targets["ratio"] = {"min": params.min_ratio, "met": summary["ratio"] >= params.min_ratio}
    result = {**meta, "params": asdict(params), "runs": runs, "median": summary,
              "targets": targets, "reference_method": runs[0]["reference"]["method"]}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: {fmt_int(summary['records_per_s'])} records/s, "
        f"reference {fmt_int(summary['reference_records_per_s'])}, ratio {summary['ratio']} "
        f"-> {path}")
    return result


def render(result: dict[str, Any]) -> str:
    p, m = result["params"], result["median"]

    def target(key: str) -> str:
        t = result["targets"].get(key)
        return "—" if t is None else f"≥ {t['min']:,} {'✅' if t['met'] else '❌ not met'}"

    table = markdown_table(
        ["records", "batch", "clients", "gunicorn workers", "runs", "ingest records/s (median)",
         "target", "reference records/s", "ratio", "ratio target", "batch p50 / p99 ms"],
        [[f"{p['records']:,}", f"{p['batch']:,}", p["clients"], p["workers"], p["runs"],
          fmt_int(m["records_per_s"]), target("records_per_s"),
          fmt_int(m["reference_records_per_s"]), f"{m['ratio']:.2f}", target("ratio"),
          f"{m['batch_p50_ms']} / {m['batch_p99_ms']}"]],
    )
    per_run = ", ".join(f"{fmt_int(r['ingest']['records_per_s'])} vs {fmt_int(r['reference']['records_per_s'])}"
                        for r in result["runs"])
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["runs"])
    return (f"{table}\n\nRuns (ingest vs reference records/s): {per_run}. Reference: "
            f"{result['reference_method']}.\n{provenance_line(result)} 1-minute load average "
            f"before each run: {loads}.")


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="a standard scenario (repeatable); default: all of them")
    ap.add_argument("--backend", choices=["postgresql", "sqlite"])
    ap.add_argument("--records", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--clients", type=int)
    ap.add_argument("--workers", type=int, help="gunicorn workers")
    ap.add_argument("--runs", type=int, help="runs per scenario; the median is reported")
    ap.add_argument("--enterprises", type=int)
    ap.add_argument("--tiny", action="store_true", help="2,000 records, 2 clients, 1 run")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--results-dir", type=Path)
    return ap.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, Params, bool]]:
    """(name, params, update docs?) for each scenario to run."""
    overrides = {k: getattr(args, k) for k in ("backend", "records", "batch", "clients", "workers",
                                               "runs", "enterprises") if getattr(args, k)}
    custom = "backend" in overrides or "records" in overrides
    if args.tiny:
        overrides = {**TINY, **overrides}
    if args.scenario:
        chosen = {n: SCENARIOS[n] for n in args.scenario}
    elif custom:
        backend = overrides.get("backend", "postgresql")
        chosen = {f"ingest-{'pg' if backend == 'postgresql' else backend}-custom":
                  Params(backend=backend)}
    else:
        chosen = dict(SCENARIOS)
    return scenario_plan(chosen, overrides, tiny=args.tiny, no_docs=args.no_docs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = []
    for name, params, docs in plan(args):
        result = run_scenario(name, params, docs=docs, results_dir=args.results_dir)
        failed += unmet_targets(name, result)
    for line in failed:
        print(f"target not met: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
