"""Reconciliation and report: seconds and peak memory for one month, as the CLI runs them.

A fresh PostgreSQL database gets a registry (providers, 10,000 enterprises, a few model
filings), one month (2026-03) of N usage records loaded with COPY, the providers' invoices
for that month and 10,000 submitted claims with their items — realistic, with the usual
faults: paid ≠ invoiced, metered ≠ invoiced, invoices that do not exist or are claimed twice,
ineligible enterprises, a provider delisted before the month, other subsidies, enterprises
that reach the annual cap. Seeding is not measured.

Measured: `voucher reconcile --period P --json` as a process of its own — wall seconds from
spawn to exit, and its peak RSS: the kernel's ru_maxrss of exactly that process, from
`os.wait4` in a small launcher (see `measure`). Before each run the month is put back as it
was seeded (claims submitted again; no balances, postings or reconciliation row; VACUUM
ANALYZE and a CHECKPOINT), so every run does the whole first-time work; each run must give
the same summary, and a re-run on top of the last one must change nothing. Then `voucher report
--period P --format xlsx --output F` is timed the same way, and the totals on the workbook's
summary sheet must equal the reconciliation summary the API serves (GET
/v1/reconciliations/P, from the service under gunicorn).

    python -m bench.reconcile                            # both standard scenarios (updates the docs)
    python -m bench.reconcile --scenario reconcile-pg-100k
    python -m bench.reconcile --records 300000 --runs 1
    python -m bench.reconcile --tiny                     # seconds; what `make test` runs
    python -m bench.reconcile --profile                  # pyinstrument over reconcile() in-process
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    RESULTS_DIR,
    BenchDatabase,
    BenchFailure,
    Server,
    markdown_table,
    median,
    provenance_line,
    publish,
    run_meta,
    scenario_plan,
    seed_registry,
    unmet_targets,
)


@dataclass(frozen=True)
class Params:
    backend: str = "postgresql"  # COPY-based seeding: PostgreSQL only
    records: int = 1_000_000
    claims: int = 10_000
    enterprises: int = 10_000
    providers: int = 12
    runs: int = 3
    period: str = "2026-03"
    seed: int = 20260301
    max_seconds: float | None = None  # acceptance targets, reported beside the figure
    max_rss_mb: float | None = None
    max_growth: float | None = None  # time of this scenario ÷ time of `growth_base`
    growth_base: str | None = None


SCENARIOS: dict[str, Params] = {
    # Issue 8: one month of 100,000 and of 1,000,000 usage records with 10,000 claims.
    "reconcile-pg-100k": Params(records=100_000),
    "reconcile-pg-1m": Params(records=1_000_000, max_seconds=60, max_rss_mb=300, max_growth=12,
                              growth_base="reconcile-pg-100k"),
}

# A seconds-long run that proves the machinery (what `make test` runs); no targets at this size.
TINY = dict(records=3000, claims=150, enterprises=150, providers=4, runs=2, max_seconds=None,
            max_rss_mb=None, max_growth=None, growth_base=None)

CST = timezone(timedelta(hours=8))
TOLERANCE = 100  # fen: the policy's default; the faults below are well outside it
# (resource, fen per GPU-hour, weight)
GPU_MODELS = [("gpu.h800", 1800, 3), ("gpu.a100", 900, 4), ("gpu.910b", 650, 3)]
GPU_COUNTS = [1, 1, 1, 2, 2, 4, 8, 8]
PARTITIONS = {"gpu.h800": "h800", "gpu.a100": "a100", "gpu.910b": "ascend"}
SIX = Decimal("0.000001")
USAGE_COLUMNS = ("provider_id", "record_id", "enterprise_uscc", "resource", "unit", "quantity",
                 "started_at", "ended_at", "period", "amount", "currency", "metadata",
                 "content_hash", "status", "voided_at", "void_reason", "created_at")


# --- realistic data --------------------------------------------------------------------------


@dataclass
class Month:
    """What was seeded, and the expectations the checks use."""

    records: int = 0
    void: int = 0
    invoices: int = 0
    claims: int = 0
    items: int = 0
    planted: dict[str, int] | None = None


def _month_bounds(period: str) -> tuple[datetime, datetime]:
    y, m = int(period[:4]), int(period[5:])
    first = datetime(y, m, 1, tzinfo=CST)
    nxt = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=CST)
    return first, nxt


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def generate_usage(params: Params, pairs: list[tuple[str, str]], weights: list[float],
                   write, first_job: int = 7_000_000) -> tuple[dict[tuple[str, str], int], int, int]:
    """N records of `params.period` over the (provider, enterprise) pairs, as COPY text lines.

    GPU jobs of 1-8 GPUs on H800/A100/910B lasting 5 minutes to 12 hours, ending inside the
    month (Asia/Shanghai); every pair gets at least one record and the rest follow `weights`;
    one record in 200 is void. Returns the active amount per pair, the record and void counts.
    """
    rng = random.Random(params.seed)
    first, nxt = _month_bounds(params.period)
    span = int((nxt - first).total_seconds()) - 1
    models = [m for m, _, _ in GPU_MODELS]
    model_w = [w for _, _, w in GPU_MODELS]
    price = {m: Decimal(p) for m, p, _ in GPU_MODELS}
    n = params.records
    picks = list(range(len(pairs)))[:n]
    if n > len(picks):
        picks += rng.choices(range(len(pairs)), weights=weights, k=n - len(picks))
    metered: dict[tuple[str, str], int] = dict.fromkeys(pairs, 0)
    created = _ts(datetime(2026, 4, 1, 2, tzinfo=CST))
    void_at = _ts(datetime(2026, 4, 2, 10, tzinfo=CST))
    voids = 0
    lines: list[str] = []
    for i, k in enumerate(picks):
        pid, uscc = pairs[k]
        res = rng.choices(models, model_w)[0]
        gpus = rng.choice(GPU_COUNTS)
        seconds = rng.randint(300, 12 * 3600)
        ended = first + timedelta(seconds=rng.randint(seconds, span))
        started = ended - timedelta(seconds=seconds)
        quantity = (Decimal(gpus * seconds) / 3600).quantize(SIX, ROUND_HALF_UP)
        amount = int((quantity * price[res]).to_integral_value(ROUND_HALF_UP))
        job = first_job + i
        meta = {"job_id": str(job), "partition": PARTITIONS[res], "gpus": gpus}
        canonical = json.dumps([uscc, res, "gpu_hour", str(quantity), started.astimezone(UTC).isoformat(),
                                ended.astimezone(UTC).isoformat(), amount, "CNY", meta],
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        void = i % 200 == 199
        if void:
            voids += 1
        else:
            metered[(pid, uscc)] += amount
        lines.append("\t".join((
            pid, f"jx-{pid}-{job}", uscc, res, "gpu_hour", str(int(quantity * 1_000_000)),
            _ts(started), _ts(ended), params.period, str(amount), "CNY",
            json.dumps(meta, separators=(",", ":")), hashlib.sha256(canonical.encode()).hexdigest(),
            "void" if void else "active", void_at if void else r"\N",
            "job re-run by the provider" if void else r"\N", created)) + "\n")
        if len(lines) >= 20_000:
            write("".join(lines).encode())
            lines = []
    if lines:
        write("".join(lines).encode())
    return metered, n, voids


def plan_month(params: Params, providers: list[str], usccs: list[str]) -> dict[str, Any]:
    """Who uses which provider, with what weight; invoices and claims come after the usage."""
    rng = random.Random(params.seed + 1)
    pairs: list[tuple[str, str]] = []
    weights: list[float] = []
    for k, uscc in enumerate(usccs):
        w = 1 / (k + 1) ** 0.8  # a few big users, a long tail
        listed = providers[:-1] or providers  # the last one leaves the catalogue (seed_month)
        chosen = rng.sample(listed, k=min(len(listed), rng.choice([1, 1, 2, 2, 3])))
        if len(providers) > 1 and rng.random() < 0.01:  # a few still used it that month
            chosen.append(providers[-1])
        shares = [rng.random() + 0.2 for _ in chosen]
        for pid, s in zip(chosen, shares, strict=True):
            pairs.append((pid, uscc))
            weights.append(w * s / sum(shares))
    return {"pairs": pairs, "weights": weights}


def invoices_and_claims(params: Params, providers: list[str], usccs: list[str],
                        metered: dict[tuple[str, str], int]) -> dict[str, Any]:
    """The providers' invoices (one per pair) and the enterprises' claims, with planted faults."""
    rng = random.Random(params.seed + 2)
    issued = date(2026, 4, 3)
    invoices = []  # (provider_id, invoice_no, uscc, period, amount, tax, issued_on, hash)
    by_uscc: dict[str, list[tuple[str, str, int]]] = {}
    planted = {"usage_invoice_mismatch": 0, "invoice_amount_mismatch": 0, "invoice_not_found": 0,
               "invoice_claimed_twice": 0, "other_subsidies": 0}
    seq = 0
    for (pid, uscc), amount in metered.items():
        seq += 1
        if rng.random() < 0.02:  # the provider invoiced more than it metered
            amount = amount + amount // 20 + 5_000
            planted["usage_invoice_mismatch"] += 1
        else:
            amount = max(amount + rng.randint(-TOLERANCE // 2, TOLERANCE // 2), 0)
        no = f"33{pid[-2:].replace('-', '0')}{params.period.replace('-', '')}{seq:08d}"
        fields = {"enterprise_uscc": uscc, "period": params.period, "amount": amount,
                  "tax_amount": amount * 6 // 106, "issued_on": issued.isoformat()}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
        invoices.append((pid, no, uscc, params.period, amount, amount * 6 // 106, issued, digest))
        by_uscc.setdefault(uscc, []).append((pid, no, amount))

    twice = max(params.claims // 100, 1) if params.claims > 1 else 0
    claimants = usccs[: min(len(usccs), params.claims - twice)]
    claims = []  # (uscc, other_subsidies, [(provider_id, invoice_no, amount_paid)])
    for uscc in claimants:
        items = []
        for pid, no, amount in by_uscc.get(uscc, []):
            r = rng.random()
            if r < 0.02:  # paid less than invoiced: a partial payment claimed
                paid = amount * 3 // 4
                planted["invoice_amount_mismatch"] += amount - paid > TOLERANCE
            elif r < 0.03:  # a typo in the invoice number
                no = no[:-3] + "999"
                planted["invoice_not_found"] += 1
                paid = amount
            else:
                paid = amount
            items.append((pid, no, paid))
        others = []
        if rng.random() < 0.1:
            total = sum(p for _, _, p in items)
            others = [{"program": "浙江省算力券", "amount": total * rng.randint(5, 30) // 100}]
            planted["other_subsidies"] += 1
        claims.append((uscc, others, items))
    for k in range(params.claims - len(claims)):  # the same invoice in a second claim
        uscc = claimants[k * 7 % len(claimants)]
        pid, no, amount = by_uscc[uscc][0]
        claims.append((uscc, [], [(pid, no, amount)]))
        planted["invoice_claimed_twice"] += 1
    return {"invoices": invoices, "claims": claims, "planted": planted}


def seed_month(bdb: BenchDatabase, params: Params, log=print) -> tuple[Month, Any]:
    """Registry through the ORM; usage, invoices and claims with COPY, as the service stores them."""
    t0 = time.perf_counter()
    seed = seed_registry(bdb.url, providers=params.providers, enterprises=params.enterprises)
    conn = bdb.connect()
    try:
        registry_faults(conn, seed.providers, seed.usccs)
        month = copy_month(conn, params, seed.providers, seed.usccs)
        conn.commit()
    finally:
        conn.close()
    settle(bdb)
    log(f"seeded {month.records:,} usage records ({month.void:,} void), {month.invoices:,} "
        f"invoices, {month.claims:,} claims with {month.items:,} items in "
        f"{time.perf_counter() - t0:.1f} s")
    return month, seed


def registry_faults(conn, providers: list[str], usccs: list[str]) -> None:
    """One provider left the catalogue before the month; 1 % of enterprises are not eligible;
    1 % obtained a model filing this year (the higher cap)."""
    conn.execute("UPDATE provider SET listed_until = %s WHERE id = %s",
                 (date(2026, 1, 31), providers[-1]))
    conn.execute("UPDATE enterprise SET eligible = false WHERE uscc = ANY(%s)",
                 (usccs[5::97],))
    with conn.cursor() as cur, cur.copy(
            "COPY model_filing (enterprise_uscc, filing_no, model_name, obtained_on, created_at) "
            "FROM STDIN") as copy:
        for k, uscc in enumerate(usccs[3::101]):
            copy.write_row((uscc, f"Zhejiang-JiaXing-{202601 + k:06d}", f"嘉禾大模型{k + 1}",
                            date(2026, 1 + k % 2, 10), datetime(2026, 2, 1, tzinfo=UTC)))


def copy_month(conn, params: Params, providers: list[str], usccs: list[str], *, first_claim: int = 1,
               first_job: int = 7_000_000) -> Month:
    """`params.period`'s usage, invoices and submitted claims (ids from `first_claim`), with COPY."""
    plan = plan_month(params, providers, usccs)
    month = Month()
    with conn.cursor() as cur, cur.copy(
            f"COPY usage_record ({', '.join(USAGE_COLUMNS)}) FROM STDIN") as copy:
        metered, month.records, month.void = generate_usage(params, plan["pairs"], plan["weights"],
                                                            copy.write, first_job)
    data = invoices_and_claims(params, providers, usccs, metered)
    with conn.cursor() as cur, cur.copy(
            "COPY provider_invoice (provider_id, invoice_no, enterprise_uscc, period, amount, tax_amount, "
            "issued_on, content_hash, created_at) FROM STDIN") as copy:
        for inv in data["invoices"]:
            copy.write_row((*inv, datetime(2026, 4, 3, 2, tzinfo=UTC)))
    month.invoices = len(data["invoices"])
    submitted = datetime(2026, 4, 8, 1, tzinfo=UTC)
    with conn.cursor() as cur:
        with cur.copy("COPY claim (id, enterprise_uscc, period, status, other_subsidies, base, "
                      "computed, payable_before_cap, payable, clawed_back, cap_reached, "
                      "discrepancies, submitted_at) FROM STDIN") as copy:
            for cid, (uscc, others, _items) in enumerate(data["claims"], first_claim):
                copy.write_row((cid, uscc, params.period, "submitted",
                                json.dumps(others, ensure_ascii=False), 0, 0, 0, 0, 0, False,
                                "[]", submitted + timedelta(seconds=cid)))
        with cur.copy("COPY claim_item (claim_id, position, provider_id, invoice_no, "
                      "amount_paid, base, discrepancies) FROM STDIN") as copy:
            for cid, (_uscc, _others, items) in enumerate(data["claims"], first_claim):
                for pos, (pid, no, paid) in enumerate(items):
                    copy.write_row((cid, pos, pid, no, paid, 0, "[]"))
                    month.items += 1
        cur.execute("SELECT setval(pg_get_serial_sequence('claim', 'id'), %s)",
                    (first_claim + len(data["claims"]) - 1,))
    month.claims = len(data["claims"])
    month.planted = data["planted"]
    return month


def settle(bdb: BenchDatabase) -> None:
    """Fresh statistics, no dead rows, no dirty pages left for the measured run to write."""
    import psycopg

    from bench.common import libpq

    with psycopg.connect(libpq(bdb.url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


def reset_month(bdb: BenchDatabase, period: str) -> None:
    """Put the month back as seeded: what the measured run must do again from the start.

    The audit trail is append-only (a trigger refuses deletes), so earlier runs' entries stay:
    one `reconciliation.run` entry per run.
    """
    conn = bdb.connect()
    try:
        conn.execute("TRUNCATE ledger_posting, quota_balance, claim_adjustment, reconciliation")
        conn.execute("UPDATE claim SET status = 'submitted', base = 0, computed = 0, "
                     "payable_before_cap = 0, payable = 0, clawed_back = 0, cap_reached = false, "
                     "discrepancies = '[]', policy_id = NULL, reconciled_at = NULL "
                     "WHERE period = %s", (period,))
        conn.execute("UPDATE claim_item SET invoice_amount = NULL, metered = NULL, base = 0, "
                     "discrepancies = '[]' WHERE claim_id IN (SELECT id FROM claim WHERE period = %s)",
                     (period,))
        conn.commit()
    finally:
        conn.close()
    settle(bdb)


def ledger_state(bdb: BenchDatabase) -> dict[str, int]:
    conn = bdb.connect()
    try:
        postings, total = conn.execute(
            "SELECT count(*), coalesce(sum(abs(amount)), 0) FROM ledger_posting").fetchone()
        reserved, granted = conn.execute(
            "SELECT coalesce(sum(reserved), 0), coalesce(sum(granted), 0) FROM quota_balance").fetchone()
    finally:
        conn.close()
    return {"postings": int(postings), "moved": int(total), "reserved": int(reserved),
            "granted": int(granted)}


# --- measuring a process ---------------------------------------------------------------------


def voucher_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("voucher")
    if exe.exists():
        return [str(exe.absolute()), *args]
    return [str(Path(sys.executable).absolute()), "-c", "from voucher.cli import main; main()", *args]


# The measured command runs as the child of a small, fresh Python (no site, ≈ 10 MB), which
# reports the child's rusage. Linux carries a process's RSS high-water mark across fork and
# exec, so a child forked straight from this (large) benchmark process would report at
# least this process's own peak as its ru_maxrss.
_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one process; wall seconds from spawn to exit and its own peak RSS (wait4's ru_maxrss)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rusage") as rusage:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _WRAPPER, rusage.name, *cmd],
                              env=env, stdout=out, stderr=err, check=False)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        maxrss_kib, user, system = rusage.read().split()
    if proc.returncode != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited with {proc.returncode}: {stderr[-2000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(int(maxrss_kib) / 1024, 1),
            "user_s": round(float(user), 2), "sys_s": round(float(system), 2), "stdout": stdout}


def xlsx_totals(path: Path) -> dict[str, int]:
    """The totals block of the workbook's summary sheet, back in fen."""
    from openpyxl import load_workbook

    from billing.reports import TOTAL_LABELS

    english = {en: key for key, (_zh, en) in TOTAL_LABELS.items()}
    wb = load_workbook(path, read_only=True)
    try:
        ws = wb[wb.sheetnames[0]]
        totals: dict[str, int] = {}
        for row in ws.iter_rows(values_only=True):
            if len(row) >= 3 and row[1] in english and english[row[1]] not in totals \
                    and isinstance(row[2], (int, float, Decimal)):
                totals[english[row[1]]] = int((Decimal(str(row[2])) * 100).to_integral_value())
            if len(totals) == len(english):
                break
    finally:
        wb.close()
    return totals


def api_summary(url: str, finance_key: str, period: str) -> dict[str, Any]:
    r = requests.get(f"{url}/v1/reconciliations/{period}",
                     headers={"Authorization": f"Bearer {finance_key}"}, timeout=600)
    r.raise_for_status()
    body = r.json()
    return {"summary": body["summary"], "claims": len(body["claims"])}


# --- one scenario ----------------------------------------------------------------------------


def run_scenario(name: str, params: Params, *, docs: bool = True, results_dir: Path | None = None,
                 docs_path: Path | None = None, admin: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    if params.backend != "postgresql":
        raise ValueError("the reconciliation benchmark seeds with COPY: PostgreSQL only")
    meta = run_meta(name)
    runs: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    with BenchDatabase.create(params.backend, admin) as bdb, \
            tempfile.TemporaryDirectory(prefix="voucher-bench-reconcile-") as tmp:
        meta["database"] = bdb.server_version()
        month, seed = seed_month(bdb, params, log=lambda m: log(f"[{name}] {m}"))
        env = {**os.environ, "VOUCHER_DATABASE_URL": bdb.url, "VOUCHER_LOG_LEVEL": "warning"}
        floor = measure(voucher_cmd("--help"), env)  # interpreter + imports, for scale
        floor.pop("stdout")
        cmd = voucher_cmd("reconcile", "--period", params.period, "--json")
        first_summary = None
        for n in range(params.runs):
            if n:
                reset_month(bdb, params.period)
            load_before = round(os.getloadavg()[0], 2)
            run = measure(cmd, env)
            summary = json.loads(run.pop("stdout"))
            if first_summary is None:
                first_summary = summary
            elif summary != first_summary:
                raise BenchFailure(f"[{name}] run {n + 1} gave another summary: {summary} "
                                   f"!= {first_summary}")
            run["load_avg_1min_before"] = load_before
            runs.append(run)
            log(f"[{name}] reconcile run {n + 1}/{params.runs}: {run['seconds']:.2f} s, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB (load {load_before})")

        # Idempotent (docs/API.md#rec-concurrency): a re-run gives the same summary and moves nothing.
        before = ledger_state(bdb)
        rerun = measure(cmd, env)
        again = json.loads(rerun.pop("stdout"))
        after = ledger_state(bdb)
        checks = {
            "runs_identical": True,
            "claims_all_reconciled": first_summary["claims"] == month.claims
            and first_summary["by_status"]["submitted"] == 0,
            "rerun_same_summary": again == first_summary,
            "rerun_moves_nothing": after == before,
            "reserved_matches_ledger": after["reserved"] == first_summary["totals"]["reserved"],
        }
        for n in range(params.runs):
            out = Path(tmp) / f"report-{n}.xlsx"
            rep = measure(voucher_cmd("report", "--period", params.period, "--format", "xlsx",
                                      "--output", str(out)), env)
            rep.pop("stdout")
            rep["bytes"] = out.stat().st_size
            reports.append(rep)
            log(f"[{name}] XLSX report run {n + 1}/{params.runs}: {rep['seconds']:.2f} s, "
                f"{rep['bytes'] / 1e6:.1f} MB, peak RSS {rep['peak_rss_mb']:.0f} MB")
        with Server(bdb.url, workers=1, log_path=Path(tmp) / "gunicorn.log") as srv:
            api = api_summary(srv.url, seed.finance_key, params.period)
        totals = xlsx_totals(out)
        checks["api_matches_cli"] = api["summary"] == first_summary and api["claims"] == month.claims
        checks["xlsx_totals_match_api"] = totals == api["summary"]["totals"]
        if not all(checks.values()):
            raise BenchFailure(f"[{name}] checks failed: {checks}; xlsx totals {totals}; "
                               f"api {api['summary']}; cli {first_summary}; ledger {before} -> {after}")

    summary = {
        "seconds": round(median(r["seconds"] for r in runs), 3),
        "peak_rss_mb": round(median(r["peak_rss_mb"] for r in runs), 1),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rerun_seconds": rerun["seconds"],
        "xlsx_seconds": round(median(r["seconds"] for r in reports), 3),
        "xlsx_peak_rss_mb": round(median(r["peak_rss_mb"] for r in reports), 1),
        "xlsx_bytes": reports[-1]["bytes"],
    }
    growth = None
    if params.growth_base:
        growth = growth_against(params.growth_base, summary["seconds"], results_dir)
        if growth is not None:
            summary["growth"] = growth["ratio"]
    targets = time_and_memory_targets(params, summary)
    if params.max_growth is not None and growth is not None:
        targets["growth"] = {"max": params.max_growth, "met": growth["ratio"] <= params.max_growth}
    result = {**meta, "params": asdict(params), "seeded": asdict(month), "floor": floor,
              "runs": runs, "rerun": rerun, "reports": reports, "checks": checks,
              "summary": first_summary, "median": summary, "growth": growth, "targets": targets,
              "rss_method": "ru_maxrss of the measured process alone, from os.wait4() in a small "
                            "launcher (KiB → MB)"}
    path = publish(name, result, render, docs=docs, results_dir=results_dir, docs_path=docs_path)
    log(f"[{name}] median of {params.runs}: reconcile {summary['seconds']:.2f} s, peak RSS "
        f"{summary['peak_rss_mb']:.0f} MB; XLSX {summary['xlsx_seconds']:.2f} s"
        + (f"; {growth['ratio']:.2f}× the time of {params.growth_base}" if growth else "")
        + f" -> {path}")
    return result


def time_and_memory_targets(params: Any, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `max_seconds` and `max_rss_mb` targets of `params` against the median figures."""
    targets = {}
    if params.max_seconds is not None:
        targets["seconds"] = {"max": params.max_seconds, "met": summary["seconds"] <= params.max_seconds}
    if params.max_rss_mb is not None:
        targets["peak_rss_mb"] = {"max": params.max_rss_mb,
                                  "met": summary["peak_rss_mb"] <= params.max_rss_mb}
    return targets


def with_target(result: dict[str, Any], key: str, value: str) -> str:
    """A table cell: the figure, and its target with ✅ or ❌ when it has one."""
    t = result["targets"].get(key)
    if t is None:
        return value
    return f"{value} (≤ {t['max']:g} {'✅' if t['met'] else '❌ not met'})"


def growth_against(base: str, seconds: float, results_dir: Path | None) -> dict[str, Any] | None:
    """This scenario's time ÷ the latest result of `base` in the results folder."""
    folder = results_dir or RESULTS_DIR
    found = sorted(folder.glob(f"{base}-2*.json"))
    if not found:
        return None
    other = json.loads(found[-1].read_text())
    base_s = other["median"]["seconds"]
    return {"base": base, "base_seconds": base_s, "base_date": other["date"],
            "base_commit": other["commit"], "base_records": other["params"]["records"],
            "ratio": round(seconds / base_s, 2)}


def render(result: dict[str, Any]) -> str:
    p, m, s = result["params"], result["median"], result["summary"]

    def target(key: str, value: str) -> str:
        return with_target(result, key, value)

    growth = result["growth"]
    ratio = "—" if growth is None else target("growth", f"{growth['ratio']:.2f}×")
    table = markdown_table(
        ["usage records", "claims / items", "runs", "reconcile s (median)", "peak RSS MB (median)",
         "time ÷ 100k", "re-run s", "XLSX report s (median)", "XLSX MB / peak RSS MB"],
        [[f"{p['records']:,}", f"{s['claims']:,} / {result['seeded']['items']:,}", p["runs"],
          target("seconds", f"{m['seconds']:.2f}"),
          target("peak_rss_mb", f"{m['peak_rss_mb']:.0f}"), ratio, f"{m['rerun_seconds']:.2f}",
          f"{m['xlsx_seconds']:.2f}",
          f"{m['xlsx_bytes'] / 1e6:.1f} / {m['xlsx_peak_rss_mb']:.0f}"]],
    )
    runs = ", ".join(f"{r['seconds']:.2f} s / {r['peak_rss_mb']:.0f} MB" for r in result["runs"])
    reports = ", ".join(f"{r['seconds']:.2f} s" for r in result["reports"])
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["runs"])
    t = s["totals"]
    lines = [
        table, "",
        f"Reconcile runs (wall / peak RSS): {runs}; XLSX runs: {reports}. A bare `voucher --help` takes {result['floor']['seconds']:.2f} s and "
        f"{result['floor']['peak_rss_mb']:.0f} MB (interpreter and imports, included above).",
        "Outcome (identical in every run and the re-run): by status "
        + ", ".join(f"{k} {v:,}" for k, v in s["by_status"].items() if v)
        + "; discrepancies " + ", ".join(f"{k} {v:,}" for k, v in s["discrepancies"].items())
        + f"; payable ¥{t['payable'] / 100:,.2f} of computed ¥{t['computed'] / 100:,.2f}.",
    ]
    if growth is not None:
        lines.append(f"Time ratio against `{growth['base']}` ({growth['base_records']:,} records, "
                     f"{growth['base_seconds']:.2f} s, measured {growth['base_date']} at "
                     f"`{growth['base_commit']}`).")
    lines.append(f"{provenance_line(result)} 1-minute load average before each run: {loads}.")
    return "\n".join(lines)


# --- profiling ---------------------------------------------------------------------------------


def profile(params: Params, out_dir: Path) -> None:
    """pyinstrument over billing.reconciliation.reconcile in-process, on freshly seeded data."""
    from pyinstrument import Profiler

    from billing.policy_file import load_policy
    from billing.reconciliation import reconcile
    from config.settings import Settings
    from kernel.db import Database

    with BenchDatabase.create(params.backend) as bdb:
        seed_month(bdb, params)
        db = Database(bdb.url)
        policy = load_policy(Settings.from_env(env={}).policy_path)
        profiler = Profiler(interval=0.001)
        t0 = time.perf_counter()
        profiler.start()
        with db.session() as session, session.begin():
            run, _ = reconcile(session, policy, params.period)
        profiler.stop()
        seconds = time.perf_counter() - t0
        db.dispose()
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"profile-reconcile-{params.records}.html"
    html.write_text(profiler.output_html())
    print(f"reconcile of {params.records:,} records / {params.claims:,} claims in {seconds:.2f} s "
          f"in-process (profiler on); HTML: {html}")


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="a standard scenario (repeatable); default: all of them")
    ap.add_argument("--records", type=int)
    ap.add_argument("--claims", type=int)
    ap.add_argument("--enterprises", type=int)
    ap.add_argument("--providers", type=int)
    ap.add_argument("--runs", type=int, help="runs per scenario; the median is reported")
    ap.add_argument("--tiny", action="store_true", help="3,000 records, 150 claims, 2 runs")
    ap.add_argument("--profile", action="store_true",
                    help="pyinstrument over reconcile() in-process instead (one run)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--results-dir", type=Path)
    return ap.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, Params, bool]]:
    """(name, params, update docs?) for each scenario to run."""
    overrides = {k: getattr(args, k) for k in ("records", "claims", "enterprises", "providers", "runs")
                 if getattr(args, k)}
    if args.tiny:
        overrides = {**TINY, **overrides}
    if args.scenario:
        chosen = {n: SCENARIOS[n] for n in args.scenario}
    elif "records" in overrides and not args.tiny:
        chosen = {"reconcile-pg-custom": Params(max_growth=None)}
    else:
        chosen = dict(SCENARIOS)
    return scenario_plan(chosen, overrides, tiny=args.tiny, no_docs=args.no_docs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        for _name, params, _docs in plan(args):
            profile(replace(params, runs=1), args.results_dir or RESULTS_DIR)
        return 0
    failed = []
    for name, params, docs in plan(args):
        result = run_scenario(name, params, docs=docs, results_dir=args.results_dir)
        failed += unmet_targets(name, result)
    for line in failed:
        print(f"target not met: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
