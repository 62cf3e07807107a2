"""What every benchmark needs: a fresh database, seeded registry rows and keys, the real
service under gunicorn, the machine it ran on, and where the results go.

A benchmark module builds on these and stays short:

    with BenchDatabase.create("postgresql") as bdb:
        seed = seed_registry(bdb.url, providers=4, enterprises=500)
        with Server(bdb.url, workers=4) as server:
            ...drive load at server.url with seed.keys...
    write_result("ingest-pg-500k", payload)
    update_docs("ingest-pg-500k", markdown)
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_PATH = ROOT / "docs" / "BENCHMARKS.md"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("postgresql", "sqlite")


def admin_url() -> str:
    return os.environ.get("VOUCHER_BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq conninfo string psycopg accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- databases ---------------------------------------------------------------------------


@dataclass
class BenchDatabase:
    """A database of its own, migrated to heads, dropped on exit."""

    backend: str
    url: str
    name: str  # PostgreSQL database name or SQLite file path
    admin: str | None = None
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @classmethod
    def create(cls, backend: str, admin: str | None = None) -> BenchDatabase:
        from voucher.migrate import upgrade

        if backend == "postgresql":
            import psycopg

            admin = admin or admin_url()
            name = f"voucher_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(libpq(admin), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = make_url(admin).set(database=name).render_as_string(hide_password=False)
            bdb = cls(backend, url, name, admin)
        elif backend == "sqlite":
            tmp = tempfile.TemporaryDirectory(prefix="voucher-bench-")
            path = Path(tmp.name) / "bench.db"
            bdb = cls(backend, f"sqlite:///{path}", str(path), None, tmp)
        else:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        try:
            upgrade(bdb.url)
        except BaseException:
            bdb.drop()
            raise
        return bdb

    def drop(self) -> None:
        if self.backend == "postgresql":
            import psycopg

            with psycopg.connect(libpq(self.admin or admin_url()), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        elif self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def connect(self):
        """A raw DB-API connection (psycopg 3 or sqlite3) for references and checks."""
        if self.backend == "postgresql":
            import psycopg

            return psycopg.connect(libpq(self.url))
        return sqlite3.connect(self.name, timeout=30)

    def server_version(self) -> str:
        conn = self.connect()
        try:
            if self.backend == "postgresql":
                return "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]
            return "SQLite " + conn.execute("select sqlite_version()").fetchone()[0]
        finally:
            conn.close()

    def __enter__(self) -> BenchDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.drop()


# --- registry rows and keys -------------------------------------------------------------


@dataclass
class Seed:
    providers: list[str]
    keys: dict[str, str]  # provider id -> plain API key
    usccs: list[str]
    finance_key: str


def seed_registry(url: str, providers: int, enterprises: int) -> Seed:
    """Providers, eligible enterprises and one key per provider, written through the ORM."""
    from kernel.db import Database
    from kernel.keys import issue_key
    from metering.models import Enterprise, Provider
    from voucher.cli_demo import make_uscc

    counties = ["南湖区", "秀洲区", "嘉善县", "平湖市", "海盐县", "海宁市", "桐乡市"]
    pids = [f"bench-prov-{i + 1}" for i in range(providers)]
    usccs = [make_uscc(1000 + i) for i in range(enterprises)]
    db = Database(url)
    try:
        with db.session() as session, session.begin():
            for i, pid in enumerate(pids):
                session.add(Provider(id=pid, name=f"嘉兴算力中心{i + 1}",
                                     kind="intelligent_computing" if i % 3 else "supercomputing",
                                     county=counties[i % len(counties)],
                                     listed_from=date(2025, 5, 13)))
            session.flush()
            for i, code in enumerate(usccs):
                session.add(Enterprise(uscc=code, name=f"嘉兴人工智能企业{i + 1}",
                                       county=counties[i % len(counties)], eligible=True))
            session.flush()
            keys = {pid: issue_key(session, "provider", pid)[1] for pid in pids}
            finance = issue_key(session, "finance", None)[1]
    finally:
        db.dispose()
    return Seed(pids, keys, usccs, finance)


# --- the service under gunicorn ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Capacity is measured, not the per-key push limits (docs/SECURITY.md).
NO_PUSH_LIMITS = {"VOUCHER_PUSH_REQUESTS_PER_SECOND": "0", "VOUCHER_PUSH_RECORDS_PER_SECOND": "0"}


class Server:
    """`python -m gunicorn -c config/gunicorn.conf.py voucher.wsgi:app` on a free port."""

    def __init__(self, database_url: str, workers: int = 4, *, worker_class: str | None = None,
                 threads: int | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None, app: str = "voucher.wsgi:app",
                 ready_path: str = "/readyz") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self.env = {**os.environ, "VOUCHER_DATABASE_URL": database_url,
                    "VOUCHER_LOG_LEVEL": "warning", **NO_PUSH_LIMITS, **(env or {})}
        self.log_path = log_path
        self.app = app  # another WSGI app under the same settings (a benchmark's reference)
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.conf.py"),
               "-b", f"127.0.0.1:{self.port}", "-w", str(self.workers)]
        if self.worker_class:
            cmd += ["-k", self.worker_class]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd + [self.app]

    def start(self, timeout: float = 60) -> Server:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log,
                                         stderr=log, start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if requests.get(f"{self.url}{self.ready_path}", timeout=3).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not become ready")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master), for profilers."""
        if self.proc is None:
            return []
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- where it ran -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- numbers ------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# --- results ------------------------------------------------------------------------------


def write_result(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """bench/results/<name>-<UTC timestamp>.json (the folder is gitignored)."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now_utc().strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def publish(name: str, result: dict[str, Any], render: Callable[[dict[str, Any]], str], *,
            docs: bool, results_dir: Path | None = None, docs_path: Path | None = None) -> Path:
    """Write the scenario's JSON (its path into `result["result_path"]`) and, when `docs`,
    its section of docs/BENCHMARKS.md rendered by `render`."""
    path = write_result(name, result, results_dir)
    result["result_path"] = str(path)
    if docs:
        update_docs(name, render(result), docs_path)
    return path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def provenance_line(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (f"Measured {meta['date']} at commit `{meta['commit']}` on {m['cpus']} × {m['cpu_model']}, "
            f"{m['ram_gib']} GiB RAM, {meta.get('database', '')}, Python {m['python']}.")


def update_docs(name: str, body: str, docs_path: Path | None = None) -> Path:
    """Replace the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`.

    A section not yet in the file is appended at its end, markers included.
    """
    path = docs_path or DOCS_PATH
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def fmt_int(x: float) -> str:
    return f"{round(x):,}"


class BenchFailure(AssertionError):
    """Lost, doubled or wrong answers, failed requests: the figure would be meaningless."""


def run_meta(name: str) -> dict[str, Any]:
    """What every result records about its run: benchmark, date, commit, machine."""
    return {"benchmark": name, "date": now_utc().isoformat(), "commit": git_commit(),
            "machine": machine_info()}


def scenario_plan(chosen: dict[str, Any], overrides: dict[str, Any], *, tiny: bool,
                  no_docs: bool) -> list[tuple[str, Any, bool]]:
    """(name, params, update docs?) per scenario: only standard ones at full size touch docs."""
    out = []
    for name, params in chosen.items():
        custom = bool(overrides) or name.endswith("-custom")
        out.append((name + ("-tiny" if tiny else ""), replace(params, **overrides),
                    not custom and not no_docs))
    return out


def unmet_targets(name: str, result: dict[str, Any]) -> list[str]:
    """One line per target a scenario missed (targets are a minimum or a maximum)."""
    return [f"{name}: {key} {result['median'].get(key)} "
            + (f"below {t['min']}" if "min" in t else f"above {t['max']}")
            for key, t in result.get("targets", {}).items() if not t["met"]]
