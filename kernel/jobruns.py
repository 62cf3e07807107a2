"""Scheduled job runs: each (job, period) runs once, across every scheduler process.

A run starts by claiming its row in `job_run` — an INSERT committed on its own, before any
work, under UNIQUE (job, period). Two processes or replicas that fire the same schedule race
on that insert; the database lets exactly one win and the others skip. A claimed row is never
claimed again: only `rerun` takes a `failed` row back (a conditional UPDATE that one caller
wins), or a `succeeded` one with force. The job functions themselves must be idempotent
(reconciliation is); the table makes sure they are not *run* twice for a period.

A run that crashed leaves its row `running`. `reap_stale` marks it `failed` when its process
is gone (same host: the pid is not alive) or its heartbeat, refreshed by a thread while the
job works, is older than the timeout (any host; hosts are assumed to keep NTP time).

Hooks (metrics plug in here; a listener that raises is logged and ignored):
- `events.on("job_finished", fn)`: fn(job, status, duration_seconds) after every run this
  process executed, status "succeeded" or "failed";
- `events.on("job_skipped", fn)`: fn(job) when a fire found its period claimed elsewhere.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import (
    Base,
    BigId,
    Database,
    UTCDateTime,
    keyset_page,
    parse_row_id,
    utcnow,
    where_given,
)
from kernel.events import Events
from kernel.periods import (
    DAY_RE,
    MINUTE_RE,
    PERIOD_RE,
    day_of,
    is_day_key,
    is_minute_key,
    is_period,
    minute_of,
    previous_period,
    shift_period,
)
from kernel.vocabulary import Event

log = logging.getLogger("voucher.jobs")

STATUSES = ("running", "succeeded", "failed")
HEARTBEAT_SECONDS = 15.0
STALE_AFTER = timedelta(minutes=2)  # eight missed heartbeats
MAX_ERROR = 4000

events = Events()

JobFn = Callable[[Database, str], Any]


class JobRun(Base):
    __tablename__ = "job_run"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    process: Mapped[str] = mapped_column(String(128))  # hostname:pid of the latest attempt
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSON)  # what the job returned (or its exception carried)

    __table_args__ = (UniqueConstraint("job", "period"),)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def parse_public_id(value: str) -> int:
    return parse_row_id("jr_", value, "job run")


# --- the registry -------------------------------------------------------------------------

MONTH_KEY = PERIOD_RE  # kernel/periods.py: the one definition of a period's syntax
MINUTE_KEY = MINUTE_RE
DAY_KEY = DAY_RE


def previous_month(fire_time: datetime) -> str:
    """Monthly jobs work on the month before the one they fire in (Asia/Shanghai)."""
    return previous_period(fire_time)


def month_before_last(fire_time: datetime) -> str:
    """Two months before the fire's month (Asia/Shanghai): statements fired on 1 December
    are those of October, reconciled on 1 November and reviewed by finance since."""
    return shift_period(previous_period(fire_time), -1)


def fire_day(fire_time: datetime) -> str:
    """The fire's date in Asia/Shanghai ('2026-11-28'): a daily job runs once per day."""
    return day_of(fire_time)


def minute_slot(fire_time: datetime) -> str:
    """The fire time's minute in Asia/Shanghai ('2026-11-28T10:15'): one period per fire.

    With the default pull schedule (*/15) this is the 15-minute slot; a denser schedule
    set by environment gets one period per fire rather than silently skipping fires.
    """
    return minute_of(fire_time)


@dataclass(frozen=True)
class JobSpec:
    """A scheduled job: when it fires, which period a fire stands for, and what it runs.

    `target` is "module:function", imported when a run starts, so domain modules can be
    added without touching the scheduler; the function is called as fn(db, period).
    """

    name: str
    cron_setting: str  # the Settings attribute holding the crontab, e.g. "reconcile_cron"
    target: str | JobFn
    period_for: Callable[[datetime], str]
    period_pattern: re.Pattern = MONTH_KEY
    catch_up: bool = False  # on start, run the periods of fires missed while no scheduler ran
    catch_up_latest: bool = False  # ... only the latest of them: each run covers all before it
    description: str = ""

    def cron(self, settings: Any) -> str:
        return getattr(settings, self.cron_setting)

    def check_period(self, period: str) -> str:
        valid = {MONTH_KEY: is_period, MINUTE_KEY: is_minute_key, DAY_KEY: is_day_key}.get(
            self.period_pattern, lambda p: bool(self.period_pattern.fullmatch(p or "")))
        if not valid(period):
            example = {MONTH_KEY: "YYYY-MM", DAY_KEY: "YYYY-MM-DD"}.get(self.period_pattern, "YYYY-MM-DDTHH:MM")
            raise ValueError(f"{period!r} is not a {self.name} period ({example})")
        return period


# The service's own registry, JOBS, is the composition root's (voucher.scheduler): it names
# the domain job functions and builds their collaborators, which this module never imports.


def load_registry(path: str) -> dict[str, JobSpec]:
    """A registry named "module:ATTRIBUTE" (tests point the scheduler at their own jobs)."""
    obj = resolve(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, JobSpec) for v in obj.values()):
        raise ValueError(f"{path} is not a mapping of job name to JobSpec")
    return dict(obj)


def resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not attr:
        raise ImportError(f"{target!r} is not 'module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --- claiming and finishing ---------------------------------------------------------------

def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(session: Session, job: str, period: str, process: str | None = None) -> JobRun | None:
    """Insert the run as `running` and commit; None if any process ever claimed (job, period).

    Runs in its own transaction: the session must not be inside one.
    """
    now = utcnow()
    run = JobRun(job=job, period=period, status="running", attempt=1,
                 process=process or process_id(), started_at=now, heartbeat_at=now)
    try:
        with session.begin():
            session.add(run)
    except IntegrityError:
        return None
    session.expunge(run)  # callers hold runs as plain values; state changes go through UPDATEs
    return run


def rerun(session: Session, job: str, period: str, process: str | None = None,
          *, force: bool = False) -> JobRun | None:
    """Take a failed (with force also a succeeded) run back as a new attempt; None if not ours.

    A period that never ran is simply claimed. A `running` row is never taken: reap it first.
    """
    takeable = ("failed", "succeeded") if force else ("failed",)
    now = utcnow()
    with session.begin():
        won = session.execute(
            update(JobRun)
            .where(JobRun.job == job, JobRun.period == period, JobRun.status.in_(takeable))
            .values(status="running", attempt=JobRun.attempt + 1, process=process or process_id(),
                    started_at=now, heartbeat_at=now, finished_at=None, error=None, result=None)
            .execution_options(synchronize_session=False)
        ).rowcount == 1
    if won:
        return get_run(session, job, period)
    if get_run(session, job, period) is None:
        return claim(session, job, period, process)
    return None


def get_run(session: Session, job: str, period: str) -> JobRun | None:
    run = session.scalars(
        select(JobRun).where(JobRun.job == job, JobRun.period == period)
        .execution_options(populate_existing=True)).first()
    session.expunge_all()
    session.commit()  # end the read transaction
    return run


def newest_run(session: Session, job: str) -> JobRun | None:
    """The job's run of the latest period (period keys sort in time order), or None."""
    run = session.scalars(
        select(JobRun).where(JobRun.job == job).order_by(JobRun.period.desc()).limit(1)
        .execution_options(populate_existing=True)).first()
    session.expunge_all()
    session.commit()  # end the read transaction
    return run


def _settle(session: Session, run: JobRun, status: str, error: str | None = None,
            result: Any = None) -> bool:
    """Record the outcome of this attempt; False if a rerun took the period over meanwhile.

    A `failed` row of the same attempt is overwritten: the reaper may have judged a slow
    heartbeat dead, and what the attempt actually did is the truth.
    """
    now = utcnow()
    with session.begin():
        done = session.execute(
            update(JobRun)
            .where(JobRun.id == run.id, JobRun.attempt == run.attempt,
                   JobRun.status.in_(("running", "failed")))
            .values(status=status, finished_at=now, heartbeat_at=now,
                    error=error[:MAX_ERROR] if error else None, result=result)
            .execution_options(synchronize_session=False)
        ).rowcount == 1
    if done:
        run.status, run.finished_at, run.error, run.result = status, now, error, result
    return done


def finish(session: Session, run: JobRun, result: Any = None) -> bool:
    return _settle(session, run, "succeeded", result=_jsonable(result))


def fail(session: Session, run: JobRun, error: str, result: Any = None) -> bool:
    return _settle(session, run, "failed", error=error, result=_jsonable(result))


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)[:MAX_ERROR]


def heartbeat(session: Session, run: JobRun) -> bool:
    """Refresh the run's heartbeat; False once the run is no longer this attempt's."""
    with session.begin():
        return session.execute(
            update(JobRun)
            .where(JobRun.id == run.id, JobRun.attempt == run.attempt, JobRun.status == "running")
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount == 1


# --- crash detection ----------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:  # a killed child nobody has waited for is a zombie: it runs nothing
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_gone(process: str, host: str | None = None) -> bool:
    """True only when `process` ran on this host and its pid is no longer alive."""
    name, _, pid = process.rpartition(":")
    if name != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


def reap_stale(session: Session, timeout: timedelta = STALE_AFTER,
               now: datetime | None = None) -> list[JobRun]:
    """Mark failed every running run whose process died or whose heartbeat went quiet."""
    now = now or utcnow()
    running = list(session.scalars(select(JobRun).where(JobRun.status == "running")))
    session.expunge_all()
    session.commit()
    reaped = []
    for run in running:
        if process_gone(run.process):
            why = f"process {run.process} is gone (crashed or killed mid-run)"
        elif run.heartbeat_at < now - timeout:
            why = (f"no heartbeat from {run.process} since {_iso(run.heartbeat_at)} "
                   f"(timeout {int(timeout.total_seconds())} s)")
        else:
            continue
        with session.begin():
            taken = session.execute(
                update(JobRun)
                .where(JobRun.id == run.id, JobRun.attempt == run.attempt, JobRun.status == "running")
                .values(status="failed", finished_at=now, error=why)
                .execution_options(synchronize_session=False)
            ).rowcount == 1
        if taken:
            log.warning("job %s period %s marked failed: %s", run.job, run.period, why)
            run.status, run.finished_at, run.error = "failed", now, why
            reaped.append(run)
    return reaped


# --- running ------------------------------------------------------------------------------

class _Heartbeat(threading.Thread):
    def __init__(self, db: Database, run: JobRun, every: float) -> None:
        super().__init__(name=f"heartbeat-{run.job}-{run.period}", daemon=True)
        self.db, self.run_, self.every = db, run, every
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with self.db.session() as session:
                    if not heartbeat(session, self.run_) and not self.stop.is_set():
                        log.warning("job %s period %s: attempt %d no longer owns the run",
                                    self.run_.job, self.run_.period, self.run_.attempt)
                        return
            except Exception:  # a missed beat is not fatal; the timeout tolerates several
                log.exception("heartbeat for job %s period %s failed", self.run_.job, self.run_.period)


def run_once(db: Database, job: str, period: str, fn: str | JobFn, *,
             process: str | None = None, again: bool = False, force: bool = False,
             heartbeat_every: float = HEARTBEAT_SECONDS) -> JobRun | None:
    """Claim (job, period), run fn(db, period), record the outcome. Never raises an Exception.

    Returns the run as settled (`succeeded` or `failed`; a failed run keeps the `result`
    attribute of the exception, if it has one), or None when the period was not
    ours to run (claimed by another process before, or running now). With `again`, a failed
    run is taken back as a new attempt (with `force`, a succeeded one too).
    """
    with db.session() as session:
        run = (rerun(session, job, period, process, force=force) if again
               else claim(session, job, period, process))
    if run is None:
        log.info("job %s period %s: already claimed by another run; skipped", job, period)
        _emit(Event.JOB_SKIPPED, job)
        return None
    log.info("job %s period %s: started (attempt %d, %s)", job, period, run.attempt, run.process)
    beat = _Heartbeat(db, run, heartbeat_every)
    beat.start()
    started = time.monotonic()
    outcome: tuple[str, str | None, Any] = ("failed", "interrupted", None)
    try:
        func = resolve(fn) if isinstance(fn, str) else fn
        outcome = ("succeeded", None, func(db, period))
    except Exception as exc:
        log.exception("job %s period %s failed", job, period)
        # An exception may carry what the job did get done (`result`): it is kept as well.
        outcome = ("failed", f"{type(exc).__name__}: {exc}", getattr(exc, "result", None))
    finally:  # also on KeyboardInterrupt/SystemExit in a foreground run, which then propagates
        beat.stop.set()
        beat.join(timeout=30)  # its last UPDATE must not race the outcome's
        status, error, result = outcome
        duration = time.monotonic() - started
        try:
            with db.session() as session:
                kept = (finish(session, run, result) if status == "succeeded"
                        else fail(session, run, error or "failed", result))
            if not kept:
                log.warning("job %s period %s: attempt %d was taken over; its outcome (%s) "
                            "is not recorded", job, period, run.attempt, status)
        except Exception:
            log.exception("job %s period %s: could not record outcome %s", job, period, status)
        log.info("job %s period %s: %s in %.3f s", job, period, status, duration)
        _emit(Event.JOB_FINISHED, job, status, duration)
    return run


def _emit(name: str, *args: Any) -> None:
    try:
        events.emit(name, *args)
    except Exception:
        log.exception("listener of %s failed", name)


def list_runs(session: Session, *, job: str | None = None, status: str | None = None,
              period: str | None = None, limit: int = 100,
              after_id: int | None = None) -> tuple[list[JobRun], bool]:
    stmt = where_given(select(JobRun), (JobRun.job, job), (JobRun.status, status),
                       (JobRun.period, period))
    return keyset_page(session, stmt, JobRun.id, limit, after_id)


def recent_runs(session: Session, limit: int = 20, job: str | None = None) -> list[JobRun]:
    """The latest runs, newest first (for `voucher jobs list`)."""
    stmt = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if job:
        stmt = stmt.where(JobRun.job == job)
    return list(session.scalars(stmt))
