"""Policy simulation: seconds and peak memory for a year replayed under another policy file.

A fresh PostgreSQL database gets the reconciliation benchmark's registry and, for each month of
2026, its realistic month (bench/reconcile.py: usage loaded with COPY, invoices, submitted claims
with the usual faults) — N usage records and C claims over the twelve months. Every month is then
reconciled in order, in-process, and every other verified claim approved through
billing/claims.py, so the year holds what a real one does: verified, flagged and approved
claims, enterprises at the cap. Seeding is not measured.

Measured: `voucher simulate --policy F --year 2026 --output X.xlsx` as a process of its own (wall
seconds, peak RSS of exactly that process; bench/reconcile.py `measure`), with F the Jiaxing file
at a 40 % rate. Checks: simulating the current policy file reproduces the actual total to the
fen, and nothing in the database changed (row counts, the audit chain's head).

    python -m bench simulate                 # the standard scenario (updates the docs)
    python -m bench simulate-pg-1m --runs 1
    python -m bench simulate --tiny --no-docs
    python -m bench.simulate --runs 1           # the same, as a module of its own
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import reconcile as month_bench
from bench.common import (
    ROOT,
    BenchDatabase,
    BenchFailure,
    markdown_table,
    median,
    provenance_line,
    publish,
    run_meta,
    seed_registry,
)
from bench.reconcile import measure, settle, time_and_memory_targets, voucher_cmd, with_target


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"  # COPY-based seeding: PostgreSQL only
    records: int = 1_000_000  # over the year
    claims: int = 10_000  # over the year
    enterprises: int = 1_000
    providers: int = 12
    runs: int = 3
    year: int = 2026
    seed: int = 20260101
    max_seconds: float | None = None
    max_rss_mb: float | None = None


SCENARIOS: dict[str, Params] = {
    # Issue 19: a year of 1,000,000 usage records and 10,000 claims, within 60 s and 300 MB.
    "simulate-pg-1m": Params(max_seconds=60, max_rss_mb=300),
}

TINY = dict(records=3_600, claims=240, enterprises=30, providers=4, runs=1, max_seconds=None, max_rss_mb=None)

POLICY = ROOT / "config" / "policies" / "jiaxing-2025.toml"
_TOTALS = re.compile(r"actual ¥([\d,.-]+) · simulated ¥([\d,.-]+)")


def _share(total: int, month: int) -> int:
    """Month `month`'s part of `total`: the twelve parts add up to it exactly."""
    return total // 12 + (month <= total % 12)


def seed_year(bdb: BenchDatabase, params: Params, log=print) -> dict[str, Any]:
    """The registry, twelve months of usage, invoices and claims, reconciled and partly approved."""
    from sqlalchemy import select

    from billing.claims import approve, lock_claim
    from billing.models import Claim
    from billing.policy_file import load_policy
    from billing.reconciliation import reconcile
    from kernel.audit import acting_as
    from kernel.db import Database

    t0 = time.perf_counter()
    seed = seed_registry(bdb.url, providers=params.providers, enterprises=params.enterprises)
    seeded = {"records": 0, "void": 0, "invoices": 0, "claims": 0, "items": 0, "approved": 0}
    conn = bdb.connect()
    try:
        month_bench.registry_faults(conn, seed.providers, seed.usccs)
        for m in range(1, 13):
            p = month_bench.Params(records=_share(params.records, m), claims=_share(params.claims, m),
                                   enterprises=params.enterprises, providers=params.providers,
                                   period=f"{params.year}-{m:02d}", seed=params.seed + m)
            month = month_bench.copy_month(conn, p, seed.providers, seed.usccs,
                                           first_claim=seeded["claims"] + 1, first_job=m * 10_000_000)
            for key in ("records", "void", "invoices", "claims", "items"):
                seeded[key] += getattr(month, key)
        conn.commit()
    finally:
        conn.close()
    settle(bdb)
    policy = load_policy(POLICY)
    db = Database(bdb.url)
    try:
        with acting_as("cli"):
            for m in range(1, 13):
                period = f"{params.year}-{m:02d}"
                with db.session() as session, session.begin():
                    reconcile(session, policy, period)
                with db.session() as session:
                    ids = list(session.scalars(select(Claim.id).where(
                        Claim.period == period, Claim.status == "verified").order_by(Claim.id)))[::2]
                for cid in ids:
                    with db.session() as session, session.begin():
                        approve(session, policy, lock_claim(session, policy, cid), None)
                seeded["approved"] += len(ids)
    finally:
        db.dispose()
    settle(bdb)
    log(f"seeded and reconciled {seeded['records']:,} usage records, {seeded['claims']:,} claims "
        f"({seeded['approved']:,} approved) in {time.perf_counter() - t0:.1f} s")
    return seeded


def database_state(bdb: BenchDatabase) -> dict[str, Any]:
    """Row counts of every table and the audit chain's head: what a simulation must not change."""
    conn = bdb.connect()
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        head = conn.execute("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return {"counts": counts, "audit_head": list(head) if head else None}


def totals(stdout: str) -> tuple[int, int]:
    """(actual, simulated) fen from `voucher simulate`'s summary line."""
    found = _TOTALS.search(stdout)
    if found is None:
        raise BenchFailure(f"no totals in: {stdout}")
    return tuple(int(v.replace(",", "").replace(".", "")) for v in found.groups())  # type: ignore[return-value]


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None, log: Any = print) -> dict[str, Any]:
    if params.backend != "postgresql":
        raise ValueError("the simulation benchmark seeds with COPY: PostgreSQL only")
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    with BenchDatabase.create(params.backend, admin) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-simulate-") as tmp:
        meta["database"] = bdb.server_version()
        seeded = seed_year(bdb, params, log=lambda m: log(f"[{name}] {m}"))
        rate_40 = Path(tmp) / "rate-40.toml"
        rate_40.write_text(POLICY.read_text(encoding="utf-8").replace('rate = "0.5"', 'rate = "0.4"')
                           .replace('id = "jiaxing-ai-plus-2025"', 'id = "jiaxing-rate-40"', 1), encoding="utf-8")
        env = {**os.environ, "VOUCHER_DATABASE_URL": bdb.url, "VOUCHER_LOG_LEVEL": "warning"}
        env.pop("VOUCHER_POLICY", None)
        # This checkout's packages, also when the `voucher` script was installed from another one.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        before = database_state(bdb)
        same = measure(voucher_cmd("simulate", "--policy", str(POLICY), "--year", str(params.year),
                                   "--output", str(Path(tmp) / "same.xlsx")), env)
        actual, replayed = totals(same.pop("stdout"))
        out = Path(tmp) / "rate-40.xlsx"
        for n in range(params.runs):
            load_before = round(os.getloadavg()[0], 2)
            run = measure(voucher_cmd("simulate", "--policy", str(rate_40), "--year", str(params.year),
                                      "--output", str(out)), env)
            run["actual"], run["simulated"] = totals(run.pop("stdout"))
            run["load_avg_1min_before"] = load_before
            run["bytes"] = out.stat().st_size
            runs.append(run)
            log(f"[{name}] simulate run {n + 1}/{params.runs}: {run['seconds']:.2f} s, peak RSS "
                f"{run['peak_rss_mb']:.0f} MB (load {load_before})")
        after = database_state(bdb)
        checks = {"current_policy_reproduces_actual": actual == replayed and actual > 0,
                  "runs_identical": len({(r["actual"], r["simulated"]) for r in runs}) == 1,
                  "rate_40_pays_less": runs[0]["simulated"] < runs[0]["actual"] == actual,
                  "nothing_written": after == before}
        if not all(checks.values()):
            raise BenchFailure(f"[{name}] checks failed: {checks}; actual {actual}, replayed {replayed}, "
                               f"runs {runs}")
    summary = {"seconds": round(median(r["seconds"] for r in runs), 3),
               "peak_rss_mb": round(median(r["peak_rss_mb"] for r in runs), 1),
               "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "same_policy_seconds": same["seconds"]}
    targets = time_and_memory_targets(params, summary)
    result = {**meta, "params": asdict(params), "seeded": seeded, "runs": runs, "same_policy": same,
              "checks": checks, "actual": actual, "simulated": runs[0]["simulated"], "median": summary,
              "targets": targets,
              "rss_method": "ru_maxrss of the measured process alone, from os.wait4() in a small "
                            "launcher (KiB → MB)"}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: simulate {summary['seconds']:.2f} s, peak RSS "
        f"{summary['peak_rss_mb']:.0f} MB -> {path}")
    return result


def render(result: dict[str, Any]) -> str:
    p, m, s = result["params"], result["median"], result["seeded"]

    def target(key: str, value: str) -> str:
        return with_target(result, key, value)

    table = markdown_table(
        ["usage records (year)", "claims (approved)", "runs", "simulate s (median)", "peak RSS MB (median)",
         "same policy s", "XLSX KB"],
        [[f"{s['records']:,}", f"{s['claims']:,} ({s['approved']:,})", p["runs"],
          target("seconds", f"{m['seconds']:.2f}"), target("peak_rss_mb", f"{m['peak_rss_mb']:.0f}"),
          f"{m['same_policy_seconds']:.2f}", f"{result['runs'][-1]['bytes'] / 1e3:.0f}"]])
    runs = ", ".join(f"{r['seconds']:.2f} s / {r['peak_rss_mb']:.0f} MB" for r in result["runs"])
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["runs"])
    return "\n".join([
        table, "",
        f"Runs (wall / peak RSS): {runs}. The year's actual payable ¥{result['actual'] / 100:,.2f}; the "
        f"Jiaxing file replayed gives the same to the fen; at a 40 % rate ¥{result['simulated'] / 100:,.2f}. "
        "Row counts and the audit chain's head are the same before and after.",
        f"{provenance_line(result)} 1-minute load average before each run: {loads}.",
    ])


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import main as suite

    return suite(["simulate", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
