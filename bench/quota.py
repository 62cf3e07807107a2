"""Quota look-ups: requests/s and p50/p99 latency at 32 connections, beside a bare Flask endpoint.

The service runs under gunicorn (config/gunicorn.conf.py, the production settings: its
worker class and VOUCHER_THREADS) on a fresh PostgreSQL database holding N enterprises, every
fourth with a model filing for the year, each with its own enterprise API key and — in
`quota-pg` — a quota balance for the year (reserved by a reconciled claim, half of them
granted); `quota-pg-no-balance` has no balance row at all (no claim yet this year, as most
enterprises most of the year), `quota-pg-one-key` sends every request with one key. The
load tool, in a separate process, keeps 32 connections busy with
`GET /v1/enterprises/{uscc}/quota?year=Y`, each request as the next enterprise with its own
key. The reference is a bare Flask JSON endpoint (`bench/bare_app.py`: the same path and body
shape, no hooks, no database) under the same gunicorn command, settings and workers, loaded
the same way in the same run. ratio = service requests/s ÷ reference requests/s.

Load tool: `wrk` (Debian package `wrk`, installed with apt-get when missing and possible),
with a Lua script rotating enterprises and keys; without it, an asyncio HTTP/1.1 client in
separate processes (`--tool python`) that does the same and measures latency the same way.

Before the load, answers for a sample of enterprises must equal the ledger's balances, and
another enterprise's quota must answer 404; during the load every answer must be a 200.

    python -m bench.quota                       # the standard scenario (updates the docs)
    python -m bench.quota --scenario quota-pg-no-balance
    python -m bench quota                       # all three scenarios
    python -m bench.quota --enterprises 500 --duration 5 --runs 1
    python -m bench.quota --tool python
    python -m bench.quota --profile             # pyinstrument + py-spy of the request path
    python -m bench.quota --tiny                # seconds; what `make test` runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bench.common import (
    BenchDatabase,
    BenchFailure,
    Server,
    fmt_int,
    markdown_table,
    median,
    percentile,
    provenance_line,
    publish,
    run_meta,
    seed_registry,
    unmet_targets,
)


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"
    enterprises: int = 2000
    connections: int = 32
    threads: int = 2  # wrk threads (python tool: processes)
    duration: float = 10.0  # seconds of load per measurement
    # seconds of load before the first measurement of each server: every worker connects,
    # prepares its statements and warms its caches, as a long-running server has
    warmup: float = 5.0
    # config/gunicorn.conf.py's default on this machine (CPUs + 1): the production settings.
    workers: int = field(default_factory=lambda: (os.cpu_count() or 1) + 1)
    runs: int = 3
    year: int = 2026
    tool: str = "auto"  # wrk when available (installed if possible), else python
    # VOUCHER_LOG_LEVEL of both servers: at `warning` the service writes no line per request
    # (the bare app never does); `info` is the production default, measured with --log-level
    log_level: str = "warning"
    seed: int = 20261101
    balances: bool = True  # a balance row per enterprise for the year (a reconciled claim)
    keys: int = 0  # (enterprise, key) pairs in rotation; 0: every enterprise's
    # VOUCHER_THREADS of both servers (config/gunicorn.conf.py's default unless set)
    server_threads: int = field(default_factory=lambda: int(os.environ.get("VOUCHER_THREADS", 4)))
    min_ratio: float | None = None  # acceptance targets, reported beside the figures
    max_p99_ms: float | None = None


SCENARIOS: dict[str, Params] = {
    # Issue 8: quota look-ups at 32 connections vs a bare Flask JSON endpoint.
    "quota-pg": Params(min_ratio=0.5, max_p99_ms=50.0),
    # Issue 14: no enterprise has a balance row yet (the cap from the filings, in SQL), and
    # one enterprise's key on all 32 connections.
    "quota-pg-no-balance": Params(balances=False, min_ratio=0.5, max_p99_ms=50.0),
    "quota-pg-one-key": Params(keys=1, min_ratio=0.5, max_p99_ms=50.0),
}

TINY = dict(enterprises=20, connections=4, threads=1, duration=1.0, warmup=0.3, workers=2, runs=1,
            min_ratio=None, max_p99_ms=None)


# --- data ------------------------------------------------------------------------------------


@dataclass
class QuotaSeed:
    pairs: list[tuple[str, str]]  # (uscc, plain enterprise key)
    balances: dict[str, dict[str, int]]  # uscc -> cap, reserved, granted, remaining
    year: int


def seed_quota(url: str, enterprises: int, year: int, seed: int = 1, balances: bool = True
               ) -> QuotaSeed:
    """N enterprises, every fourth with a model filing obtained in `year`, one enterprise API
    key each, and with `balances` a balance row each: a reconciled claim reserved part of the
    cap, and half of the claims were approved (granted). Written through billing.ledger, so
    postings and balances agree as they do in production; the expected answers are
    billing.ledger.quotas(), the quota's definition."""
    from datetime import date

    from billing import ledger
    from billing.models import Claim
    from billing.policy_file import load_policy
    from config.settings import Settings
    from kernel.db import Database
    from kernel.keys import issue_key
    from metering.models import ModelFiling

    base = seed_registry(url, providers=2, enterprises=enterprises)
    policy = load_policy(Settings.from_env(env={}).policy_path)
    rng = random.Random(seed)
    period = f"{year}-03"
    db = Database(url)
    pairs: list[tuple[str, str]] = []
    try:
        with db.session() as session, session.begin():
            session.add_all(ModelFiling(enterprise_uscc=u, filing_no=f"ZJ-{year}-{n}",
                                        model_name=f"模型{n}", obtained_on=date(year, 3, 1))
                            for n, u in enumerate(base.usccs) if n % 4 == 0)
            session.flush()
            for uscc in base.usccs:
                pairs.append((uscc, issue_key(session, "enterprise", uscc)[1]))
        if not balances:
            with db.session() as session:
                expected = _expected(ledger.quotas(session, policy, year))
            return QuotaSeed(pairs, expected, year)
        with db.session() as session, session.begin():
            rows = ledger.lock_balances(session, policy, [(u, year) for u in base.usccs])
            claims = []
            for uscc in base.usccs:
                payable = rng.randrange(10_000, 20_000_000)  # 100 – 200,000 yuan
                claims.append(Claim(enterprise_uscc=uscc, period=period, status="verified",
                                    base=payable * 2, computed=payable, payable_before_cap=payable,
                                    payable=payable, policy_id=policy.id, other_subsidies=[],
                                    discrepancies=[]))
            session.add_all(claims)
            session.flush()
            for n, claim in enumerate(claims):
                b = rows[(claim.enterprise_uscc, year)]
                ledger.reserve(session, b, claim.payable, claim_id=claim.id, policy_id=policy.id,
                               reason=f"reconciliation {period}")
                if n % 2 == 0:
                    ledger.grant(session, b, claim.payable, claim_id=claim.id, policy_id=policy.id,
                                 reason="approved")
                    claim.status = "approved"
        with db.session() as session:
            expected = _expected(ledger.quotas(session, policy, year))
    finally:
        db.dispose()
    return QuotaSeed(pairs, expected, year)


def _expected(quotas: dict) -> dict[str, dict[str, Any]]:
    return {u: {"cap": b.cap, "cap_basis": str(b.cap_basis), "reserved": b.reserved,
                "granted": b.granted, "remaining": b.remaining} for u, b in quotas.items()}


def check_answers(url: str, qs: QuotaSeed, sample: int = 20) -> dict[str, bool]:
    """The service's answers equal the ledger's balances; another enterprise's quota is 404."""
    picked = qs.pairs[:: max(1, len(qs.pairs) // sample) | 1]  # odd: filed and unfiled alike
    right = True
    for uscc, key in picked:
        r = requests.get(f"{url}/v1/enterprises/{uscc}/quota", params={"year": qs.year},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
        body = r.json()
        right &= r.status_code == 200 and {k: body[k] for k in qs.balances[uscc]} == qs.balances[uscc]
    (u0, k0), (u1, _k1) = qs.pairs[0], qs.pairs[-1]
    other = requests.get(f"{url}/v1/enterprises/{u1}/quota", params={"year": qs.year},
                         headers={"Authorization": f"Bearer {k0}"}, timeout=30)
    wrong_key = requests.get(f"{url}/v1/enterprises/{u0}/quota", params={"year": qs.year},
                             headers={"Authorization": f"Bearer {k0[:-1]}x"}, timeout=30)
    return {"answers_equal_ledger": bool(right),
            "other_enterprise_404": other.status_code == 404 or u0 == u1,
            "bad_key_401": wrong_key.status_code == 401}


# --- load tools ------------------------------------------------------------------------------


def ensure_wrk(log: Any = print) -> str | None:
    """The wrk binary; installed from Debian when missing and we may (root, apt-get)."""
    found = shutil.which("wrk")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    log("[quota] wrk not found: apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=600)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"non_2xx":%d,"timeouts":%d,"p50_us":%d,' ..
    '"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""  # wrk's figures as one JSON line, read by run_wrk

WRK_SCRIPT = """
local targets = {%(targets)s}
local n = #targets
local year = %(year)d
local counter = 0
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 7919)
  table.insert(threads, thread)
end

function init(args)
  counter = offset
end

function request()
  counter = counter + 1
  local t = targets[(counter %% n) + 1]
  return wrk.format("GET", "/v1/enterprises/" .. t[1] .. "/quota?year=" .. year,
                    {["Authorization"] = "Bearer " .. t[2]})
end
"""


def wrk_script(path: Path, pairs: list[tuple[str, str]], year: int) -> Path:
    targets = ",".join(f'{{"{u}","{k}"}}' for u, k in pairs)
    path.write_text(WRK_SCRIPT % {"targets": targets, "year": year} + WRK_DONE)
    return path


def run_wrk(wrk: str, url: str, script: Path, params: Params, seconds: float) -> dict[str, Any]:
    cmd = [wrk, f"-t{params.threads}", f"-c{params.connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=seconds + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line[len("WRKJSON "):])
    seconds = r["duration_us"] / 1e6
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return {"tool": "wrk", "requests": r["requests"], "seconds": round(seconds, 3),
            "requests_per_s": round(r["requests"] / seconds, 1),
            "latency_ms": {"p50": round(r["p50_us"] / 1000, 2), "p90": round(r["p90_us"] / 1000, 2),
                           "p99": round(r["p99_us"] / 1000, 2), "max": round(r["max_us"] / 1000, 2),
                           "mean": round(r["mean_us"] / 1000, 2)},
            "non_2xx": r["non_2xx"], "socket_errors": errors}


async def _py_connection(host: str, port: int, requests_: list[bytes], start: int, stop_at: float,
                         latencies: list[float], counts: dict[str, int]) -> None:
    i = start
    reader = writer = None
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(requests_[i % len(requests_)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length, close = 0, False
            for ln in lines[1:]:
                name, _, value = ln.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            counts["socket_errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        latencies.append(time.perf_counter() - t0)
        counts["requests"] += 1
        if not 200 <= status < 300:
            counts["non_2xx"] += 1
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _py_client(url: str, pairs: list[tuple[str, str]], year: int, connections: int, offset: int,
               seconds: float, barrier, out) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    reqs = [(f"GET /v1/enterprises/{u}/quota?year={year} HTTP/1.1\r\nHost: {host}:{port}\r\n"
             f"Authorization: Bearer {k}\r\n\r\n").encode() for u, k in pairs]
    latencies: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "socket_errors": 0}

    async def main() -> tuple[float, float]:
        barrier.wait()
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(_py_connection(host, port, reqs, offset + c * 7919, stop_at,
                                              latencies, counts) for c in range(connections)))
        return started, time.perf_counter()

    started, finished = asyncio.run(main())
    out.put({"started": started, "finished": finished, "latencies": latencies, **counts})


def run_python(url: str, pairs: list[tuple[str, str]], params: Params, seconds: float
               ) -> dict[str, Any]:
    """The same load as wrk from `threads` processes with asyncio connections each; latency
    is from writing a request to reading its last byte (a reconnect included when the
    server closed the connection)."""
    procs_n = max(1, min(params.threads, params.connections))
    per = [params.connections // procs_n + (1 if i < params.connections % procs_n else 0)
           for i in range(procs_n)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs_n), ctx.Queue()
    procs = [ctx.Process(target=_py_client, daemon=True,
                         args=(url, pairs, params.year, per[i], i * 104729, seconds, barrier, out))
             for i in range(procs_n)]
    for p in procs:
        p.start()
    reports = []
    deadline = time.monotonic() + seconds + 120
    while len(reports) < procs_n:
        try:
            reports.append(out.get(timeout=5))
        except queue.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.terminate()
                raise RuntimeError("python load client failed") from None
    for p in procs:
        p.join(30)
    elapsed = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    lat = [x for r in reports for x in r["latencies"]]
    n = sum(r["requests"] for r in reports)
    return {"tool": "python", "requests": n, "seconds": round(elapsed, 3),
            "requests_per_s": round(n / elapsed, 1),
            "latency_ms": {"p50": round(percentile(lat, 50) * 1000, 2),
                           "p90": round(percentile(lat, 90) * 1000, 2),
                           "p99": round(percentile(lat, 99) * 1000, 2),
                           "max": round(max(lat) * 1000, 2),
                           "mean": round(sum(lat) / len(lat) * 1000, 2)},
            "non_2xx": sum(r["non_2xx"] for r in reports),
            "socket_errors": sum(r["socket_errors"] for r in reports)}


class Load:
    """One load tool, set up once for a scenario."""

    def __init__(self, params: Params, pairs: list[tuple[str, str]], tmp: Path, log: Any) -> None:
        self.params = params
        self.pairs = pairs
        self.wrk = ensure_wrk(log) if params.tool in ("auto", "wrk") else None
        if params.tool == "wrk" and self.wrk is None:
            raise RuntimeError("wrk is not installed and could not be installed")
        self.tool = "wrk" if self.wrk else "python"
        self.script = wrk_script(tmp / "quota.lua", pairs, params.year) if self.wrk else None

    def __call__(self, url: str, seconds: float) -> dict[str, Any]:
        if self.wrk:
            return run_wrk(self.wrk, url, self.script, self.params, seconds)
        return run_python(url, self.pairs, self.params, seconds)


# --- one scenario ----------------------------------------------------------------------------


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    with BenchDatabase.create(params.backend, admin) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-quota-") as tmp:
        meta["database"] = bdb.server_version()
        t0 = time.perf_counter()
        qs = seed_quota(bdb.url, params.enterprises, params.year, params.seed, params.balances)
        log(f"[{name}] seeded {params.enterprises:,} enterprises with "
            f"{'balances and ' if params.balances else ''}keys in "
            f"{time.perf_counter() - t0:.1f} s; {meta['database']}")
        pairs = qs.pairs[:]
        random.Random(params.seed).shuffle(pairs)
        pairs = pairs[:params.keys] if params.keys else pairs
        load = Load(params, pairs, Path(tmp), log)
        meta["tool"] = load.tool
        env = {"VOUCHER_LOG_LEVEL": params.log_level, "VOUCHER_THREADS": str(params.server_threads)}
        service = Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "service.log",
                         env=env)
        bare = Server(bdb.url, workers=params.workers, log_path=Path(tmp) / "bare.log",
                      app="bench.bare_app:app", env=env)
        with service, bare:
            checks = check_answers(service.url, qs)
            if not all(checks.values()):
                raise BenchFailure(f"[{name}] {checks}")
            for srv in (bare, service):  # pools, imports and caches warm before measuring
                load(srv.url, params.warmup)
            for n in range(params.runs):
                load_before = round(os.getloadavg()[0], 2)
                reference = load(bare.url, params.duration)
                quota = load(service.url, params.duration)
                for what, r in (("reference", reference), ("quota", quota)):
                    if r["non_2xx"] or r["socket_errors"] or not r["requests"]:
                        raise BenchFailure(f"[{name}] run {n + 1}: {what} {r}")
                ratio = round(quota["requests_per_s"] / reference["requests_per_s"], 3)
                runs.append({"quota": quota, "reference": reference, "ratio": ratio,
                             "load_avg_1min_before": load_before})
                log(f"[{name}] run {n + 1}/{params.runs}: quota {fmt_int(quota['requests_per_s'])} "
                    f"req/s (p50 {quota['latency_ms']['p50']} ms, p99 {quota['latency_ms']['p99']} "
                    f"ms); bare Flask {fmt_int(reference['requests_per_s'])} req/s (p50 "
                    f"{reference['latency_ms']['p50']} ms, p99 {reference['latency_ms']['p99']} ms);"
                    f" ratio {ratio}")
    summary = summarise(runs, "quota")
    targets = targets_of(params, summary)
    result = {**meta, "params": asdict(params), "checks": checks, "runs": runs, "median": summary,
              "targets": targets}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: {fmt_int(summary['requests_per_s'])} req/s, p50 "
        f"{summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; bare Flask "
        f"{fmt_int(summary['reference_requests_per_s'])} req/s; ratio {summary['ratio']} -> {path}")
    return result


def summarise(runs: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """Medians over the runs of the service (`side`) and the reference, and their ratio."""
    return {
        "requests_per_s": round(median(r[side]["requests_per_s"] for r in runs), 1),
        "p50_ms": median(r[side]["latency_ms"]["p50"] for r in runs),
        "p99_ms": median(r[side]["latency_ms"]["p99"] for r in runs),
        "reference_requests_per_s": round(median(r["reference"]["requests_per_s"] for r in runs), 1),
        "reference_p50_ms": median(r["reference"]["latency_ms"]["p50"] for r in runs),
        "reference_p99_ms": median(r["reference"]["latency_ms"]["p99"] for r in runs),
        "ratio": round(median(r["ratio"] for r in runs), 3),
    }


def targets_of(params: Any, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scenario's acceptance targets (min_ratio, max_p99_ms) beside the figures."""
    targets = {}
    if params.min_ratio is not None:
        targets["ratio"] = {"min": params.min_ratio, "met": summary["ratio"] >= params.min_ratio}
    if params.max_p99_ms is not None:
        targets["p99_ms"] = {"max": params.max_p99_ms, "met": summary["p99_ms"] <= params.max_p99_ms}
    return targets


def figures_table(label: str, result: dict[str, Any]) -> str:
    """The service (`label`) beside the bare Flask reference, with the targets marked."""
    m, t = result["median"], result["targets"]
    ratio_t, p99_t = t.get("ratio"), t.get("p99_ms")
    return markdown_table(
        ["", "requests/s (median)", "p50 ms", "p99 ms"],
        [[label, fmt_int(m["requests_per_s"]), m["p50_ms"],
          f"{m['p99_ms']}" + (f" (target ≤ {p99_t['max']:g} {'✅' if p99_t['met'] else '❌ not met'})"
                              if p99_t else "")],
         ["bare Flask JSON endpoint (reference)", fmt_int(m["reference_requests_per_s"]),
          m["reference_p50_ms"], m["reference_p99_ms"]],
         ["**ratio**", f"**{m['ratio']:.2f}**"
          + (f" (target ≥ {ratio_t['min']:g} {'✅' if ratio_t['met'] else '❌ not met'})"
             if ratio_t else ""), "", ""]],
    )


def render(result: dict[str, Any]) -> str:
    p = result["params"]
    table = figures_table("quota look-ups (service)", result)
    per_run = ", ".join(f"{fmt_int(r['quota']['requests_per_s'])} vs "
                        f"{fmt_int(r['reference']['requests_per_s'])} (p99 "
                        f"{r['quota']['latency_ms']['p99']} vs {r['reference']['latency_ms']['p99']} ms)"
                        for r in result["runs"])
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["runs"])
    keys = p.get("keys") or p["enterprises"]
    rows = ("a balance row each" if p.get("balances", True)
            else "no balance row (the cap from the filings)")
    rotation = ("one enterprise's key on every connection" if keys == 1
                else f"{keys:,} enterprises and keys in rotation")
    return (f"{table}\n\n{p['connections']} connections, {p['duration']:g} s per measurement, "
            f"{p['runs']} runs, {p['workers']} gunicorn workers × {p.get('server_threads', 4)} "
            f"threads (config/gunicorn.conf.py's worker), load tool `{result['tool']}` "
            f"({p['threads']} threads), {p['enterprises']:,} enterprises with {rows}, "
            f"{rotation}, VOUCHER_LOG_LEVEL={p.get('log_level', 'warning')}.\n"
            f"Runs (service vs reference requests/s): {per_run}.\n{provenance_line(result)} "
            f"1-minute load average before each run: {loads}.")


# --- profiling -------------------------------------------------------------------------------


def profile(params: Params, out_dir: Path, requests_n: int = 3000, log: Any = print) -> None:
    """pyinstrument over the app's request path in-process (Flask test client), then py-spy
    attached to one gunicorn worker under wrk load; both written to out_dir."""
    import logging

    from pyinstrument import Profiler

    from config.settings import Settings
    from voucher.app import create_app

    out_dir.mkdir(parents=True, exist_ok=True)
    with BenchDatabase.create(params.backend) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-quota-") as tmp:
        qs = seed_quota(bdb.url, params.enterprises, params.year, params.seed)
        app = create_app(Settings.from_env(env={}, database_url=bdb.url))
        client = app.test_client()
        reqs = [(f"/v1/enterprises/{u}/quota?year={params.year}", {"Authorization": f"Bearer {k}"})
                for u, k in qs.pairs]
        for path, headers in reqs[:50]:
            assert client.get(path, headers=headers).status_code == 200
        logging.disable(logging.CRITICAL)  # the request log goes nowhere in-process...
        profiler = Profiler(interval=0.0002)
        t0 = time.perf_counter()
        profiler.start()
        for i in range(requests_n):
            path, headers = reqs[i % len(reqs)]
            client.get(path, headers=headers)
        profiler.stop()
        seconds = time.perf_counter() - t0
        logging.disable(logging.NOTSET)
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        (out_dir / "profile-quota.html").write_text(profiler.output_html())
        log(f"[quota] {requests_n:,} requests in-process in {seconds:.2f} s "
            f"({seconds / requests_n * 1e6:.0f} µs each with the profiler on)")
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        wrk = ensure_wrk(log)
        if not wrk or not Path(spy).exists():
            return
        script = wrk_script(Path(tmp) / "quota.lua", qs.pairs, params.year)
        with Server(bdb.url, workers=1, log_path=Path(tmp) / "service.log") as server:
            (worker,) = server.worker_pids()
            raw = out_dir / "py-spy-quota.txt"
            proc = subprocess.Popen([spy, "record", "--nonblocking", "-p", str(worker), "-r", "500",
                                     "-f", "raw", "-o", str(raw), "-d", "12"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(1)
            r = run_wrk(wrk, server.url, script, replace(params, connections=8), 8)
            proc.wait(60)
        log(f"[quota] py-spy under wrk (1 worker, 8 connections): {fmt_int(r['requests_per_s'])} "
            f"req/s; collapsed stacks in {raw}")
        print_heaviest(raw, log)


def print_heaviest(raw: Path, log: Any = print, top: int = 25) -> None:
    """Inclusive share of samples per function from py-spy's collapsed stacks."""
    from collections import Counter

    total, inclusive = 0, Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for frame in {f.split(" (")[0] for f in stack.split(";")}:
            inclusive[frame] += n
    for frame, n in inclusive.most_common(top):
        log(f"  {n / total:6.1%}  {frame}")


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.quota", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="quota-pg")
    ap.add_argument("--enterprises", type=int)
    ap.add_argument("--connections", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--duration", type=float, help="seconds of load per measurement")
    ap.add_argument("--workers", type=int, help="gunicorn workers")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--tool", choices=["auto", "wrk", "python"])
    ap.add_argument("--log-level", dest="log_level", choices=["warning", "info"],
                    help="VOUCHER_LOG_LEVEL of both servers (default warning: no request lines)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile the request path instead")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--results-dir", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench.common import RESULTS_DIR

    args = parse_args(argv)
    params = SCENARIOS[args.scenario]
    overrides = {k: getattr(args, k) for k in ("enterprises", "connections", "threads", "duration",
                                               "workers", "runs", "tool", "log_level")
                 if getattr(args, k)}
    if args.tiny:
        params = replace(params, **TINY)
    params = replace(params, **overrides)
    if args.profile:
        profile(params, args.results_dir or RESULTS_DIR)
        return 0
    custom = args.tiny or bool(set(overrides) - {"tool", "runs"})
    name = args.scenario + ("-tiny" if args.tiny else "-custom" if custom else "")
    result = run_scenario(name, params, docs=not (custom or args.no_docs),
                          results_dir=args.results_dir)
    for line in unmet_targets(name, result):
        print(f"target not met: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
