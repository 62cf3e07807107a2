"""Redemption authorisations (核销): requests/s and p50/p99 latency at 32 connections, beside a
bare Flask endpoint, on PostgreSQL (issue 16).

The service runs under gunicorn (config/gunicorn.conf.py, the production settings) on a fresh
PostgreSQL database holding N eligible enterprises and P providers, each provider with its
API key. The load tool keeps 32 connections busy with `POST /v1/redemptions`, each request a
new authorisation (a reference never used before, so every answer is a 201 that holds the
subsidy on the enterprise's quota: the period's shared lock, the balance row's lock and
conditional UPDATE, the redemption row, the ledger posting, the audit entry and its events),
rotating (provider key, enterprise) pairs. The reference is the bare Flask app
(`bench/bare_app.py`: the same path and body shape, no hooks, no database) under the same
gunicorn command, settings and workers, loaded the same way in the same run.
ratio = service requests/s ÷ reference requests/s. Three more servers are loaded the same way in
the same run and reported beside them, to say where the ratio's limit lies:
- the write floor (`bench/floor_app.py`: one INSERT per request in autocommit, one round trip,
  raw psycopg): the share of the bare endpoint's rate that any durable write keeps here;
- the hold floor (`bench/hold_floor_app.py`, a database of its own): the hold's own rows,
  written by the service's `voucher_hold` behind a SQL wrapper that reads the balance row, in one
  round trip with nothing around it: what those writes keep whatever the Python in front;
- the ceiling: the service itself, unchanged, on a database of its own in which `voucher_hold`
  (migration 0019) is replaced by a function that writes nothing and reports success — every
  step of an authorisation but its writes (key, read, decision, call, answer, metrics, log):
  what this request path would reach if the hold's writes cost nothing.
For each server, the CPU it and PostgreSQL spent per request (bench/cpu.py, from /proc). Each
measurement starts after a CHECKPOINT, so the pages one server's writes dirtied are not
flushed on the next one's time.

Before the load: an authorisation answers 201 holding half the list amount, the same request
again 200 with the same id, a wrong key 401. After it: `voucher ledger verify` holds (every
hold's posting beside its balance row, billing/ledger.py `verify`), in the hold floor's
database too, which holds a hold's rows for every answer; the ceiling's holds nothing.

Load tool: `wrk` (Debian package `wrk`, scripts/ensure-wrk.sh) with a Lua script making each
reference unique per thread and invocation; the python tool of bench/quota.py sends GETs only,
so this benchmark needs wrk.

    python -m bench.redemptions                   # the standard scenario (updates the docs)
    python -m bench redemptions
    python -m bench.redemptions --enterprises 200 --duration 5 --runs 1
    python -m bench.redemptions --tiny            # seconds; what tests/test_bench_redemptions.py runs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

import requests

from bench import cpu
from bench.common import (
    BenchDatabase,
    BenchFailure,
    Server,
    fmt_int,
    libpq,
    markdown_table,
    provenance_line,
    publish,
    run_meta,
    seed_registry,
    unmet_targets,
)
from bench.cpu import CpuMeter
from bench.hold_floor_app import install as install_hold_floor
from bench.quota import WRK_DONE, ensure_wrk, figures_table, run_wrk, summarise, targets_of
from billing.policy_file import load_policy


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"
    enterprises: int = 2000
    providers: int = 4
    connections: int = 32
    threads: int = 2  # wrk threads
    duration: float = 10.0  # seconds of load per measurement
    warmup: float = 5.0  # seconds of load per server before the first measurement
    workers: int = field(default_factory=lambda: (os.cpu_count() or 1) + 1)
    runs: int = 3
    period: str = "2026-03"
    list_amount: int = 200  # fen: a 100-fen hold, so no quota runs out under load
    tool: str = "wrk"
    log_level: str = "warning"
    seed: int = 20261116
    server_threads: int = field(default_factory=lambda: int(os.environ.get("VOUCHER_THREADS", 4)))
    ceiling: bool = True  # also measure the service with a voucher_hold that writes nothing
    hold_floor: bool = True  # and the hold's rows written with the least Python (bench/hold_floor_app.py)
    min_ratio: float | None = None
    max_p99_ms: float | None = None


SCENARIOS: dict[str, Params] = {
    # Issue 16: authorisations at 32 connections vs a bare Flask JSON endpoint.
    "redemptions-pg": Params(min_ratio=0.4, max_p99_ms=50.0),
}

# The measured servers, as run results name them, and as the report labels them.
SIDES = {"authorisations": "authorisations (service)", "reference": "bare Flask JSON endpoint",
         "write_floor": "write floor (one INSERT)", "hold_floor": "hold floor (a hold's rows, least Python)",
         "ceiling": "ceiling (service, writes nothing)"}

TINY = dict(enterprises=20, providers=2, connections=4, threads=1, duration=1.0, warmup=0.3, workers=2,
            runs=1, min_ratio=None, max_p99_ms=None)


@dataclass
class RedemptionSeed:
    pairs: list[tuple[str, str]]  # (plain provider key, uscc)
    usccs: list[str]


def seed_redemptions(url: str, params: Params) -> RedemptionSeed:
    """Providers with a key each and eligible enterprises (bench.common.seed_registry)."""
    base = seed_registry(url, providers=params.providers, enterprises=params.enterprises)
    pairs = [(base.keys[base.providers[n % len(base.providers)]], u) for n, u in enumerate(base.usccs)]
    random.Random(params.seed).shuffle(pairs)
    return RedemptionSeed(pairs, base.usccs)


def _post(url: str, key: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v1/redemptions", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})


def check_answers(url: str, rs: RedemptionSeed, params: Params) -> dict[str, bool]:
    """A new authorisation holds half the list amount (201); the same again answers it (200);
    a wrong key is 401."""
    key, uscc = rs.pairs[0]
    body = {"enterprise_uscc": uscc, "reference": "bench-check-1", "list_amount": 1_001, "period": params.period}
    first, again = _post(url, key, body), _post(url, key, body)
    wrong = _post(url, key[:-1] + ("x" if key[-1] != "x" else "y"), {**body, "reference": "bench-check-2"})
    return {"hold_is_half": first.status_code == 201 and first.json()["subsidy"] == 501,
            "replay_same_id": again.status_code == 200 and again.json()["id"] == first.json()["id"],
            "bad_key_401": wrong.status_code == 401}


def check_ledger(url: str, answered: int) -> dict[str, bool]:
    """After the load: the ledger verifies (postings = balance rows, holds included) and every
    authorisation answered holds its own redemption (none was a replay)."""
    from sqlalchemy import func, select

    from billing import ledger
    from billing.redemption_models import Redemption
    from kernel.db import Database

    db = Database(url)
    try:
        with db.session() as session:
            report = ledger.verify(session)
            held = session.scalar(select(func.count()).select_from(Redemption)
                                  .where(Redemption.reference.like("b%"))) or 0
    finally:
        db.dispose()
    return {"ledger_verified": bool(report.ok), "one_hold_per_answer": held >= answered}


def check_hold_floor(url: str, held: int) -> dict[str, bool]:
    """The hold floor wrote a hold's rows for every answer through voucher_hold (a redemption,
    its two postings, an audit entry and an event; a balance row's opening postings the first
    time), and its ledger verifies."""
    import psycopg

    with psycopg.connect(libpq(url)) as conn:
        rdm, postings, entries, events, rows = conn.execute(
            "SELECT (SELECT count(*) FROM redemption), (SELECT count(*) FROM ledger_posting),"
            " (SELECT count(*) FROM audit_event), (SELECT count(*) FROM event),"
            " (SELECT count(*) FROM quota_balance)").fetchone()
    ok = rdm >= held and (postings, entries, events) == (2 * rdm + 2 * rows, rdm, rdm)
    # wrk counts what it saw answered; a request cut off at the end may still have been written
    return {"hold_floor_rows_per_answer": ok, "hold_floor_ledger_verified": check_ledger(url, 0)["ledger_verified"]}


def settle(url: str) -> None:
    """A checkpoint before each measurement: the dirty pages the previous server's writes left
    are flushed now, not charged to whichever server is loaded next (the five share one
    PostgreSQL). Skipped where the role may not checkpoint."""
    import psycopg

    try:
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error:
        pass


def check_ceiling(url: str) -> dict[str, bool]:
    """The ceiling answered without writing: no redemption, posting or audit entry in its database."""
    import psycopg

    with psycopg.connect(libpq(url)) as conn:
        (rows,) = conn.execute("SELECT (SELECT count(*) FROM redemption) + (SELECT count(*) FROM ledger_posting)"
                               " + (SELECT count(*) FROM audit_event WHERE object_type = 'redemption')").fetchone()
    return {"ceiling_wrote_nothing": rows == 0}


WRK_SCRIPT = """
local targets = {%(targets)s}
local n = #targets
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = tid * 7919
  prefix = "b" .. os.time() .. "-" .. tid .. "-"
end

function request()
  counter = counter + 1
  local t = targets[(counter %% n) + 1]
  local body = '{"enterprise_uscc":"' .. t[2] .. '","reference":"' .. prefix .. counter ..
    '","list_amount":%(amount)d,"period":"%(period)s"}'
  return wrk.format("POST", "/v1/redemptions",
                    {["Authorization"] = "Bearer " .. t[1], ["Content-Type"] = "application/json"}, body)
end
"""


def create_floor_table(url: str) -> None:
    """The write floor's own table (bench/floor_app.py), beside the service's."""
    import psycopg

    from bench.floor_app import CREATE

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(CREATE)


def install_ceiling(url: str) -> None:
    """Replace voucher_hold in this (the ceiling's own) database by one that writes nothing and
    answers as if it had written: same signature, so the service calls it unchanged."""
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        (args,) = conn.execute("SELECT pg_get_function_identity_arguments('voucher_hold'::regproc)").fetchone()
        conn.execute(f"CREATE OR REPLACE FUNCTION voucher_hold({args}) RETURNS bigint "
                     "LANGUAGE sql AS 'SELECT 0::bigint'")


def wrk_script(path: Path, pairs: list[tuple[str, str]], params: Params) -> Path:
    targets = ",".join(f'{{"{k}","{u}"}}' for k, u in pairs)
    path.write_text(WRK_SCRIPT % {"targets": targets, "amount": params.list_amount, "period": params.period}
                    + WRK_DONE)
    return path


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    wrk = ensure_wrk(log)
    if wrk is None:
        raise RuntimeError("wrk is not installed (scripts/ensure-wrk.sh)")
    meta["tool"] = "wrk"
    with BenchDatabase.create(params.backend, admin) as bdb, \
            BenchDatabase.create(params.backend, admin) as cdb, \
            BenchDatabase.create(params.backend, admin) as hdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-redemptions-") as tmp:
        meta["database"] = bdb.server_version()
        t0 = time.perf_counter()
        rs = seed_redemptions(bdb.url, params)
        log(f"[{name}] seeded {params.enterprises:,} enterprises and {params.providers} providers in "
            f"{time.perf_counter() - t0:.1f} s; {meta['database']}")
        script = wrk_script(Path(tmp) / "redemptions.lua", rs.pairs, params)
        ceiling_script = None
        if params.ceiling:
            ceiling_script = wrk_script(Path(tmp) / "ceiling.lua", seed_redemptions(cdb.url, params).pairs, params)
            install_ceiling(cdb.url)
        if params.hold_floor:  # the same registry (seed_registry is deterministic), keys unused
            seed_redemptions(hdb.url, params)
            install_hold_floor(hdb.url, load_policy().cap_standard)
        env = {"VOUCHER_LOG_LEVEL": params.log_level, "VOUCHER_THREADS": str(params.server_threads)}
        service = Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "service.log", env=env)
        bare = Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "bare.log",
                      app="bench.bare_app:app", env=env)
        floor = Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "floor.log",
                       app="bench.floor_app:app", env=env)
        ceiling = Server(cdb.url, workers=params.workers, log_path=Path(tmp) / "ceiling.log", env=env)
        create_floor_table(bdb.url)
        hold_floor = Server(hdb.url, workers=params.workers, log_path=Path(tmp) / "hold_floor.log",
                            app="bench.hold_floor_app:app", env={**env, "BENCH_PROVIDERS": str(params.providers)})
        servers = ([service, bare, floor] + ([hold_floor] if params.hold_floor else [])
                   + ([ceiling] if params.ceiling else []))
        with contextlib.ExitStack() as running:
            for srv in servers:
                running.enter_context(srv)
            checks = check_answers(service.url, rs, params)
            if not all(checks.values()):
                raise BenchFailure(f"[{name}] {checks}")
            answered = 0  # the service's 201s, warm-up included
            held = 0  # the hold floor's
            for srv in servers[1:] + servers[:1]:
                warm = run_wrk(wrk, srv.url, ceiling_script if srv is ceiling else script, params, params.warmup)
                answered += warm["requests"] if srv is service else 0
                held += warm["requests"] if srv is hold_floor else 0

            def measure(srv: Server, what: str, n: int, lua: Path) -> dict[str, Any]:
                settle(bdb.url)
                meter = CpuMeter([srv.proc.pid, *srv.worker_pids()]) if cpu.available() else None
                before = meter.sample() if meter else None
                r = run_wrk(wrk, srv.url, lua, params, params.duration)
                if meter and before:
                    r["cpu"] = meter.per_request(before, meter.sample(), r["requests"])
                if r["non_2xx"] or r["socket_errors"] or not r["requests"]:
                    raise BenchFailure(f"[{name}] run {n + 1}: {what} {r}")
                return r

            for n in range(params.runs):
                load_before = round(os.getloadavg()[0], 2)
                reference = measure(bare, "reference", n, script)
                write_floor = measure(floor, "write floor", n, script)
                authorise = measure(service, "authorisations", n, script)
                run = {"authorisations": authorise, "reference": reference,
                       "ratio": round(authorise["requests_per_s"] / reference["requests_per_s"], 3),
                       "write_floor": write_floor,
                       "write_floor_ratio": round(write_floor["requests_per_s"] / reference["requests_per_s"], 3),
                       "load_avg_1min_before": load_before}
                if params.hold_floor:
                    run["hold_floor"] = measure(hold_floor, "hold floor", n, script)
                    run["hold_floor_ratio"] = round(run["hold_floor"]["requests_per_s"]
                                                    / reference["requests_per_s"], 3)
                    held += run["hold_floor"]["requests"]
                if ceiling_script is not None:
                    run["ceiling"] = measure(ceiling, "ceiling", n, ceiling_script)
                    run["ceiling_ratio"] = round(run["ceiling"]["requests_per_s"] / reference["requests_per_s"], 3)
                answered += authorise["requests"]
                runs.append(run)
                log(f"[{name}] run {n + 1}/{params.runs}: authorisations "
                    f"{fmt_int(authorise['requests_per_s'])} req/s (p50 {authorise['latency_ms']['p50']} ms, "
                    f"p99 {authorise['latency_ms']['p99']} ms); bare Flask {fmt_int(reference['requests_per_s'])}"
                    f" req/s; ratio {run['ratio']}; write floor {fmt_int(write_floor['requests_per_s'])} req/s "
                    f"(ratio {run['write_floor_ratio']})"
                    + (f"; hold floor {fmt_int(run['hold_floor']['requests_per_s'])} req/s (ratio "
                       f"{run['hold_floor_ratio']})" if "hold_floor" in run else "")
                    + (f"; ceiling {fmt_int(run['ceiling']['requests_per_s'])} req/s (ratio "
                       f"{run['ceiling_ratio']})" if "ceiling" in run else ""))
        checks.update(check_ledger(bdb.url, answered))
        if params.ceiling:
            checks.update(check_ceiling(cdb.url))
        if params.hold_floor:
            checks.update(check_hold_floor(hdb.url, held))
        if not all(checks.values()):
            raise BenchFailure(f"[{name}] after the load: {checks}")
    summary = summarise(runs, "authorisations")
    summary["write_floor_requests_per_s"] = round(median(r["write_floor"]["requests_per_s"] for r in runs), 1)
    summary["write_floor_p99_ms"] = median(r["write_floor"]["latency_ms"]["p99"] for r in runs)
    summary["write_floor_ratio"] = round(median(r["write_floor_ratio"] for r in runs), 3)
    if all("hold_floor" in r for r in runs):
        summary["hold_floor_requests_per_s"] = round(median(r["hold_floor"]["requests_per_s"] for r in runs), 1)
        summary["hold_floor_p99_ms"] = median(r["hold_floor"]["latency_ms"]["p99"] for r in runs)
        summary["hold_floor_ratio"] = round(median(r["hold_floor_ratio"] for r in runs), 3)
    if all("ceiling" in r for r in runs):
        summary["ceiling_requests_per_s"] = round(median(r["ceiling"]["requests_per_s"] for r in runs), 1)
        summary["ceiling_p99_ms"] = median(r["ceiling"]["latency_ms"]["p99"] for r in runs)
        summary["ceiling_ratio"] = round(median(r["ceiling_ratio"] for r in runs), 3)
    if all("cpu" in r[side] for r in runs for side in SIDES if side in r):
        summary["cpu"] = {side: {k: round(median(r[side]["cpu"][k] for r in runs))
                                 for k in ("server_us", "postgres_us", "machine_busy_pct")}
                          for side in SIDES if all(side in r for r in runs)}
    targets = targets_of(params, summary)
    result = {**meta, "params": asdict(params), "checks": checks, "runs": runs, "median": summary,
              "targets": targets}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: {fmt_int(summary['requests_per_s'])} req/s, p99 "
        f"{summary['p99_ms']} ms; ratio {summary['ratio']} -> {path}")
    return result


def render(result: dict[str, Any]) -> str:
    p = result["params"]
    table = figures_table("authorisations (service)", result)
    m = result["median"]
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["runs"])
    floor = ""
    if "write_floor_ratio" in m:
        floor = (f"\n\nWrite floor (`bench/floor_app.py`: the same endpoint doing one INSERT committed on its own — one round trip through raw psycopg, nothing else — same server and settings, same run): "
                 f"{fmt_int(m['write_floor_requests_per_s'])} req/s, p99 {m['write_floor_p99_ms']} ms, "
                 f"**{m['write_floor_ratio']:.2f}** of the bare endpoint — what any durable write keeps "
                 f"on this machine before a hold's own work (balance lock and update, redemption row, "
                 f"ledger posting, audit entry, event) is counted.")
    if "hold_floor_ratio" in m:
        floor += (f"\n\nHold floor (`bench/hold_floor_app.py`, a database of its own: what a plain authorisation writes, "
                  f"written by the service's own `voucher_hold` — period lock, balance row, redemption, postings, audit "
                  f"entry on the chain, event — called by a SQL wrapper that reads the balance row: one round trip "
                  f"through raw psycopg, with no key check, Python read, decision or answer schema around it): "
                  f"{fmt_int(m['hold_floor_requests_per_s'])} req/s, p99 {m['hold_floor_p99_ms']} ms, "
                  f"**{m['hold_floor_ratio']:.2f}** of the bare endpoint.")
    if "ceiling_ratio" in m:
        floor += (f"\n\nCeiling (the service unchanged, on a database of its own where `voucher_hold` writes nothing "
                  f"and reports success: key, read, decision, call, answer — every step but the writes): "
                  f"{fmt_int(m['ceiling_requests_per_s'])} req/s, p99 {m['ceiling_p99_ms']} ms, "
                  f"**{m['ceiling_ratio']:.2f}** of the bare endpoint.")
    if "cpu" in m:
        floor += "\n\nCPU per request while each was loaded (bench/cpu.py, medians):\n\n" + markdown_table(
            ["server", "gunicorn µs", "PostgreSQL µs", "machine busy"],
            [[SIDES[side], fmt_int(c["server_us"]), fmt_int(c["postgres_us"]), f"{c['machine_busy_pct']} %"]
             for side, c in m["cpu"].items()])
    return (f"{table}{floor}\n\n{p['connections']} connections, {p['duration']:g} s per measurement, {p['runs']} runs, "
            f"{p['workers']} gunicorn workers × {p['server_threads']} threads, load tool `{result['tool']}` "
            f"({p['threads']} threads), {p['enterprises']:,} enterprises and {p['providers']} providers in "
            f"rotation, every request a new hold of {p['list_amount'] // 2} fen, "
            f"VOUCHER_LOG_LEVEL={p['log_level']}.\n{provenance_line(result)} "
            f"1-minute load average before each run: {loads}.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.redemptions", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="redemptions-pg")
    for name in ("enterprises", "connections", "threads", "workers", "runs"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--duration", type=float, help="seconds of load per measurement")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--results-dir", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = SCENARIOS[args.scenario]
    overrides = {k: getattr(args, k) for k in ("enterprises", "connections", "threads", "duration",
                                               "workers", "runs") if getattr(args, k)}
    if args.tiny:
        params = replace(params, **TINY)
    params = replace(params, **overrides)
    custom = args.tiny or bool(set(overrides) - {"runs"})
    name = args.scenario + ("-tiny" if args.tiny else "-custom" if custom else "")
    result = run_scenario(name, params, docs=not (custom or args.no_docs), results_dir=args.results_dir)
    for line in unmet_targets(name, result):
        print(f"target not met: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
