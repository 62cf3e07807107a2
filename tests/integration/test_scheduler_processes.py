"""Real `voucher scheduler` processes sharing one PostgreSQL database (docs/API.md#jobs).

Each test gets a database of its own, created from VOUCHER_TEST_DATABASE_URL or, when that is
unset, from the local PostgreSQL every machine running the suite has. The schedulers load a
test job registry through VOUCHER_JOBS_MODULE (tests/jobs_fixture.py); everything else — the
CLI, APScheduler, the claims, the heartbeats, the signals — is the production path.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from kernel.db import Database
from kernel.jobruns import JobRun, minute_slot, previous_month
from tests import jobs_fixture
from tests.conftest import DEFAULT_PG, PG_URL, World, create_pg_database, drop_pg_database
from voucher.migrate import upgrade
from voucher.scheduler import JOBS, cron_trigger, last_fire_time

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VOUCHER = str(Path(sys.executable).parent / "voucher")
HOST = socket.gethostname()


@pytest.fixture
def pg_db() -> Iterator[Database]:
    admin = PG_URL or DEFAULT_PG
    name, url = create_pg_database(admin)
    db = Database(url)
    try:
        upgrade(url)
        jobs_fixture.ensure_tables(db)
        yield db
    finally:
        db.dispose()
        drop_pg_database(admin, name)


def voucher_env(db: Database, registry: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCHER_")}
    env.update(VOUCHER_DATABASE_URL=db.url, VOUCHER_JOBS_MODULE=f"tests.jobs_fixture:{registry}",
               VOUCHER_LOG_JSON="0", PYTHONPATH=str(ROOT), **extra)
    return env


class Schedulers:
    """`voucher scheduler` processes, each logging to its own file; stopped with SIGTERM."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            log = open(self.logs / f"scheduler-{len(self.procs)}.log", "wb")
            self.procs.append(subprocess.Popen(
                [VOUCHER, "scheduler", "--heartbeat", "1"], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT))
            log.close()

    def log(self, i: int) -> str:
        return (self.logs / f"scheduler-{i}.log").read_text()

    def stop(self) -> list[int | None]:
        """SIGTERM every live process; their exit codes (None if one had to be killed)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=20))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        return codes


@pytest.fixture
def schedulers(tmp_path: Path) -> Iterator[Callable[..., Schedulers]]:
    made: list[Schedulers] = []

    def make(env: dict[str, str]) -> Schedulers:
        made.append(Schedulers(tmp_path, env))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def job_runs(db: Database) -> list[JobRun]:
    with db.session() as s:
        return list(s.scalars(select(JobRun).order_by(JobRun.id)))


def wait_for(what: str, check: Callable[[], object], timeout: float, procs: Schedulers) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        dead = [i for i, p in enumerate(procs.procs) if p.poll() is not None]
        assert not dead, f"scheduler {dead[0]} exited:\n{procs.log(dead[0])}"
        time.sleep(0.2)
    logs = "\n".join(procs.log(i) for i in range(len(procs.procs)))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def test_three_schedulers_run_each_minute_of_an_every_minute_schedule_once(pg_db, schedulers):
    """Three processes fire `* * * * *` together; each period runs in exactly one of them.

    The first period comes from the catch-up pass (all three start at once and race for it),
    the second from the cron fire at the next minute boundary.
    """
    env = voucher_env(pg_db, "MINUTE_JOBS", VOUCHER_RECONCILE_CRON="* * * * *",
                      VOUCHER_TEST_JOB_SLEEP="2")
    group = schedulers(env)
    group.start(3)
    wait_for("three schedulers to start", lambda: all(
        "Scheduler started" in group.log(i) for i in range(3)), 30, group)
    # the first cron fire every process will see (one a second away could be missed)
    boundary = (datetime.now(UTC) + timedelta(seconds=1)).replace(second=0, microsecond=0) \
        + timedelta(minutes=1)
    fired = minute_slot(boundary)

    def boundary_period_done():
        return any(r.period == fired and r.status == "succeeded" for r in job_runs(pg_db))

    wait_for(f"period {fired} to succeed", boundary_period_done,
             (boundary - datetime.now(UTC)).total_seconds() + 30, group)
    assert group.stop() == [0, 0, 0]  # SIGTERM: a clean stop

    runs = job_runs(pg_db)
    periods = [r.period for r in runs]
    assert len(periods) >= 2 and periods[-1] == fired  # the catch-up's, then the fire's
    assert all((r.status, r.attempt, r.error) == ("succeeded", 1, None) for r in runs), runs
    pids = {p.pid for p in group.procs}
    assert {r.process for r in runs} <= {f"{HOST}:{pid}" for pid in pids}
    # The job body ran once per period: no duplicate starts, no duplicate effects.
    for table in jobs_fixture.TABLES:
        ran = Counter(period for _, period, _ in jobs_fixture.rows(pg_db, table))
        assert ran == Counter(periods), table
    # All three processes really fired for the boundary period; one ran it, two skipped it.
    logs = [group.log(i) for i in range(3)]
    started_lines = sum(log.count(f"period {fired}: started") for log in logs)
    skipped = [f"period {fired}: already claimed" in log for log in logs]
    assert started_lines == 1 and skipped.count(True) >= 2, "\n".join(logs)


def test_sigterm_lets_the_run_in_progress_finish_then_exits(pg_db, schedulers):
    env = voucher_env(pg_db, "MONTHLY_JOBS", VOUCHER_RECONCILE_CRON="0 2 1 * *",
                      VOUCHER_TEST_JOB_SLEEP="3")
    group = schedulers(env)
    group.start(1)
    wait_for("the catch-up run to start", lambda: jobs_fixture.rows(pg_db, "test_job_started"),
             30, group)
    began = time.monotonic()
    assert group.stop() == [0]
    assert time.monotonic() - began > 1.5  # it waited for the job instead of abandoning it
    (run,) = job_runs(pg_db)
    assert (run.status, run.attempt) == ("succeeded", 1)
    assert len(jobs_fixture.rows(pg_db, "test_job_effect")) == 1
    assert "waiting for runs in progress" in group.log(0)


@dataclass
class Workload:
    """What the killed scheduler was running, and how to tell its effect happened once."""

    registry: str
    setup: Callable[[Database, str], object]
    check_once: Callable[[Database, str, object], None]
    check_nothing: Callable[[Database, str, object], None]


def _effect_rows(db: Database, period: str) -> list:
    return [r for r in jobs_fixture.rows(db, "test_job_effect") if r[1] == period]


def _test_job_once(db: Database, period: str, _setup: object) -> None:
    assert len(_effect_rows(db, period)) == 1


def _test_job_nothing(db: Database, period: str, _setup: object) -> None:
    assert _effect_rows(db, period) == []


def _programme(db: Database, period: str) -> dict:
    """One enterprise whose claim for `period` asks for a subsidy of 500,000 fen."""
    from tests.factories import claim, invoice, setup_programme, usage

    world = World(db.url)
    jobs_fixture.ensure_tables(db)
    _, (uscc,) = setup_programme(world.finance, providers=("prov-a",), enterprises=1)
    prov, ent = world.as_key("provider", "prov-a"), world.as_key("enterprise", uscc)
    usage(prov, uscc, 1_000_000, period=period)
    invoice(prov, "INV-1", uscc, 1_000_000, period=period)
    claim_id = claim(ent, [("prov-a", "INV-1", 1_000_000)], period=period)
    world.db.dispose()
    return {"uscc": uscc, "year": int(period[:4]), "claim": claim_id}


def _reservations(db: Database, setup: dict) -> tuple[int, int, bool]:
    from billing.ledger import verify
    from billing.models import LedgerPosting, QuotaBalance

    with db.session() as s:
        entries = s.scalar(select(func.count(func.distinct(LedgerPosting.entry_id)))
                           .where(LedgerPosting.kind == "reserve"))
        reserved = s.scalar(select(QuotaBalance.reserved).where(
            QuotaBalance.enterprise_uscc == setup["uscc"], QuotaBalance.year == setup["year"]))
        return entries or 0, reserved or 0, verify(s).ok


def _reconciled_once(db: Database, period: str, setup: dict) -> None:
    assert _reservations(db, setup) == (1, 500_000, True)


def _reconciled_nothing(db: Database, period: str, setup: dict) -> None:
    entries, reserved, ok = _reservations(db, setup)
    assert (entries, reserved, ok) == (0, 0, True)


WORKLOADS = {
    "test_job": Workload("MONTHLY_JOBS", lambda db, p: None, _test_job_once, _test_job_nothing),
    "reconciliation": Workload("RECONCILE_JOBS", _programme, _reconciled_once,
                               _reconciled_nothing),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_a_scheduler_killed_mid_run_leaves_a_period_that_reruns_once(pg_db, schedulers, workload):
    """kill -9 the scheduler running reconcile; the other leaves the period alone; the
    re-run reaps the dead run, completes it as attempt 2, and its effect exists once."""
    work = WORKLOADS[workload]
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime.now(UTC)
    period = previous_month(last_fire_time(cron_trigger(JOBS["reconcile"], Settings(), tz), now))
    setup = work.setup(pg_db, period)
    env = voucher_env(pg_db, work.registry, VOUCHER_RECONCILE_CRON="0 2 1 * *",
                      VOUCHER_TEST_JOB_SLEEP="60")
    group = schedulers(env)
    group.start(2)  # both catch up the missed period at start; one claims it

    victim_pid = wait_for("the run to start", lambda: next(
        (pid for _, p, pid in jobs_fixture.rows(pg_db, "test_job_started") if p == period), None),
        30, group)
    time.sleep(0.5)  # well inside the run's open transaction
    victim = next(p for p in group.procs if p.pid == victim_pid)
    survivor = next(p for p in group.procs if p.pid != victim_pid)
    victim.kill()  # SIGKILL: no handler, no cleanup
    victim.wait()

    (run,) = job_runs(pg_db)
    assert (run.period, run.attempt, run.process) == (period, 1, f"{HOST}:{victim_pid}")
    assert run.status in ("running", "failed")  # failed once the survivor's reaper saw it
    work.check_nothing(pg_db, period, setup)  # the killed transaction left nothing behind
    assert survivor.poll() is None

    rerun = subprocess.run([VOUCHER, "jobs", "rerun", "reconcile", period], cwd=ROOT,
                           env={**env, "VOUCHER_TEST_JOB_SLEEP": "0"}, capture_output=True,
                           text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"reconcile {period} succeeded (attempt 2" in rerun.stdout
    (run,) = job_runs(pg_db)
    assert (run.status, run.attempt, run.error) == ("succeeded", 2, None)
    assert re.fullmatch(rf"{re.escape(HOST)}:\d+", run.process)
    assert run.process not in (f"{HOST}:{victim_pid}", f"{HOST}:{survivor.pid}")
    work.check_once(pg_db, period, setup)
    starts = [p for _, p, _ in jobs_fixture.rows(pg_db, "test_job_started")]
    assert starts == [period, period]  # the killed attempt and the re-run; the survivor never

    assert group.stop()[group.procs.index(survivor)] == 0
