"""`voucher scheduler`: the scheduled jobs, in a process of their own.

Web workers never run jobs (APScheduler inside gunicorn would fire once per worker). Any
number of scheduler processes may run against one database, for availability: every fire
first claims its (job, period) row (kernel.jobruns), so one process runs it and the others skip.

This module is also where the service's jobs are registered (JOBS) and wired: a job function
that needs collaborators built from the settings (the payment back-end of `statements`) gets
them here, when its run starts, so the domain modules never build them themselves.

A process keeps its schedule in memory, so fires missed while no scheduler was running are
recovered by the catch-up pass at start (for the daily `reconcile`, the latest missed day
only: each run covers every open month): for each job marked `catch_up`, it walks back through
the cron fires from the latest one to the newest period the job already has a run for, and
runs every period in between, oldest first (a scheduler down across two monthly fires runs
both months). At most `catch_up_periods` periods per job (VOUCHER_CATCH_UP_PERIODS, default
12; 0 turns catch-up off); a job that never ran at all (a new deployment) runs only its latest
fire's period. Each period is still claimed once, so schedulers starting together run it once
between them; a failed run is left for `voucher jobs rerun`. Within a running process, a late
fire still runs (no misfire limit) and a backlog coalesces into one.
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session

from config.settings import Settings
from kernel.audit import acting_as
from kernel.db import Database, utcnow
from kernel.jobruns import (
    DAY_KEY,
    HEARTBEAT_SECONDS,
    MINUTE_KEY,
    STALE_AFTER,
    JobRun,
    JobSpec,
    fire_day,
    minute_slot,
    month_before_last,
    newest_run,
    reap_stale,
    run_once,
)

log = logging.getLogger("voucher.scheduler")

REAP_EVERY_SECONDS = 60
WEBHOOKS_EVERY_SECONDS = 1.0  # the delivery worker's poll (docs/API.md#webhooks)
CATCH_UP_PERIODS = 12  # default of settings.catch_up_periods
_HORIZON = timedelta(days=400)  # a crontab that fired in none of the last 400 days: no catch-up
_MAX_FIRES = 10_000  # fires walked back per job (a dense crontab with long periods stops here)


def job_settings() -> Settings:
    """The settings a job run is wired from, read when the run starts (a run may come from
    this process's schedule or from `voucher jobs run` in another process)."""
    return Settings.from_env()


def pull_job(db: Database, period: str) -> dict[str, Any]:
    """The `pull` job: adapters.pull.pull_job over the provider files of the settings."""
    from adapters.pull import pull_job as pull_all
    from billing.policy_file import load_policy

    settings = job_settings()
    return pull_all(db, period, settings.providers_dir,
                    require_contracts=load_policy(settings.policy_path).require_contracts)


def reconcile_job(db: Database, day: str) -> dict[str, Any]:
    """The daily `reconcile` job: billing's reconcile_open_job (every open period re-run, due
    ones closed) under the policy file of the settings. `day`: the fire's date, its run key."""
    from billing.jobs import reconcile_open_job
    from billing.policy_file import load_programmes

    settings = job_settings()
    programmes = load_programmes(settings.policies_dir, settings.policy_path)
    return reconcile_open_job(db, day, programmes.default, programmes.others)


def statements_job(db: Database, period: str) -> dict[str, Any]:
    """The `statements` job: billing's statements_job with the policy and the payment back-end
    (the Stripe-compatible client, VOUCHER_STRIPE_API_BASE / _KEY) built from the settings
    when the run starts."""
    from adapters.stripe import StripeClient
    from billing.jobs import statements_job as issue_period
    from billing.policy_file import load_policy

    settings = job_settings()
    policy = load_policy(settings.policy_path)
    with StripeClient.from_settings(settings) as payments:
        return issue_period(db, period, payments, policy)


def idempotency_expiry_job(db: Database, period: str) -> dict[str, Any]:
    """The `idempotency-expiry` job: delete stored Idempotency-Key answers older than
    VOUCHER_IDEMPOTENCY_TTL_HOURS."""
    from api.idempotency import expire_answers

    hours = job_settings().idempotency_ttl_hours
    with db.session() as session, session.begin():
        deleted = expire_answers(session, timedelta(hours=hours))
    return {"deleted": deleted, "ttl_hours": hours}


def redemption_expiry_job(db: Database, period: str) -> dict[str, Any]:
    """The `redemption-expiry` job: authorised holds past expires_at are expired and released."""
    from billing.policy_file import load_policy
    from billing.redemptions import expire_due

    return expire_due(db, load_policy(job_settings().policy_path))


def settlements_job(db: Database, quarter: str) -> dict[str, Any]:
    """The `settlements` job: each provider's settlement batch of the quarter (YYYYQn)."""
    from billing.policy_file import load_policy
    from billing.settlements import settlements_job as build_quarter

    return build_quarter(db, quarter, load_policy(job_settings().policy_path))


def _previous_quarter(fire_time: datetime) -> str:
    from billing.settlements import previous_quarter

    return previous_quarter(fire_time)


QUARTER_KEY = re.compile(r"^(20[0-9]{2}|2100)Q[1-4]$")

JOBS: dict[str, JobSpec] = {
    "pull": JobSpec("pull", "pull_cron", "voucher.scheduler:pull_job", minute_slot, MINUTE_KEY,
                    description="pull usage from every provider with a pull adapter"),
    # Daily, keyed by the fire's date: one run per day however many schedulers fire it; a
    # scheduler down for days catches up the latest day only (each run covers every open month).
    "reconcile": JobSpec("reconcile", "reconcile_cron", "voucher.scheduler:reconcile_job",
                         fire_day, DAY_KEY, catch_up=True, catch_up_latest=True,
                         description="re-run every open period; close those past close_after_days"),
    "statements": JobSpec("statements", "statements_cron", "voucher.scheduler:statements_job",
                          month_before_last, catch_up=True,
                          description="issue the statements of the month before last"),
    "idempotency-expiry": JobSpec("idempotency-expiry", "idempotency_expiry_cron",
                                  "voucher.scheduler:idempotency_expiry_job", minute_slot,
                                  MINUTE_KEY,
                                  description="delete stored Idempotency-Key answers older "
                                              "than VOUCHER_IDEMPOTENCY_TTL_HOURS"),
    "redemption-expiry": JobSpec("redemption-expiry", "redemption_expiry_cron",
                                 "voucher.scheduler:redemption_expiry_job", minute_slot, MINUTE_KEY,
                                 description="expire authorised redemptions past expires_at; release their holds"),
    # Once per quarter (the run's key), and once per (provider, quarter) by the batch's unique key.
    "settlements": JobSpec("settlements", "settlements_cron", "voucher.scheduler:settlements_job",
                           _previous_quarter, QUARTER_KEY, catch_up=True,
                           description="build each provider's settlement batch of the last quarter"),
}


def cron_trigger(spec: JobSpec, settings: Any, tz: ZoneInfo) -> CronTrigger:
    expr = spec.cron(settings)
    try:
        return CronTrigger.from_crontab(expr, timezone=tz)
    except ValueError as exc:
        var = f"VOUCHER_{spec.cron_setting.upper()}"
        raise ValueError(f"bad schedule for job {spec.name} ({var}={expr!r}): {exc}") from None


def last_fire_time(trigger: CronTrigger, now: datetime,
                   horizon: timedelta = _HORIZON) -> datetime | None:
    """The trigger's latest fire time at or before `now` (None if none within the horizon).

    A run's period comes from the fire it stands for, not from the clock when it got to run.
    """
    window = timedelta(minutes=2)
    while True:
        first = trigger.get_next_fire_time(None, now - window)
        if first is not None and first <= now:
            break
        if window >= horizon:
            return None
        window = min(window * 4, horizon)
    last = first
    while True:
        following = trigger.get_next_fire_time(last, last + timedelta(seconds=1))
        if following is None or following > now:
            return last
        last = following


def fire(db: Database, spec: JobSpec, trigger: CronTrigger, heartbeat_every: float) -> None:
    """One scheduled fire: work out its period, then claim and run it (or skip)."""
    now = utcnow()
    period = spec.period_for(last_fire_time(trigger, now) or now)
    with acting_as("scheduler"):  # what the job changes is audited as the scheduler's
        run_once(db, spec.name, period, spec.target, heartbeat_every=heartbeat_every)


def reap(db: Database, stale_after: timedelta) -> None:
    try:
        with db.session() as session:
            reap_stale(session, stale_after)
    except Exception:
        log.exception("reaping stale job runs failed")


def missed_periods(session: Session, spec: JobSpec, trigger: CronTrigger, now: datetime,
                   limit: int = CATCH_UP_PERIODS) -> tuple[list[str], JobRun | None, bool]:
    """The periods of `spec`'s fires up to `now` that have no run yet, oldest first.

    Walks back fire by fire from the latest one until a period at or before the newest
    period with a run (any status); returns (periods, that newest run, whether `limit` cut
    the walk short). A job without any run gets only its latest fire's period.
    """
    newest = newest_run(session, spec.name)
    missed: list[str] = []
    fired = last_fire_time(trigger, now)
    for _ in range(_MAX_FIRES):
        if fired is None:
            break
        period = spec.period_for(fired)
        if newest is not None and period <= newest.period:
            break
        if period not in missed:
            if len(missed) == limit:
                return missed[::-1], newest, True
            missed.append(period)
            if newest is None:  # a new deployment: nothing older to recover
                break
        fired = last_fire_time(trigger, fired - timedelta(seconds=1))
    return missed[::-1], newest, False


def catch_up(db: Database, jobs: Mapping[str, JobSpec], triggers: Mapping[str, CronTrigger],
             heartbeat_every: float, stale_after: timedelta,
             max_periods: int = CATCH_UP_PERIODS) -> None:
    """Run each catch-up job's missed periods (see missed_periods), oldest first, one job
    after the other in registry order (reconcile's months before statements')."""
    reap(db, stale_after)
    if max_periods < 1:
        log.info("catch-up: disabled (VOUCHER_CATCH_UP_PERIODS=%d)", max_periods)
        return
    now = utcnow()
    for name, spec in jobs.items():
        if not spec.catch_up:
            continue
        try:
            with db.session() as session:
                periods, newest, cut = missed_periods(session, spec, triggers[name], now,
                                                      1 if spec.catch_up_latest else max_periods)
            if spec.catch_up_latest:
                cut = False  # the latest run covers the days before it
        except Exception:
            log.exception("catch-up of job %s: cannot read its runs", name)
            continue
        if newest is not None and newest.status == "failed":
            log.warning("catch-up: job %s period %s failed (%s); run `voucher jobs rerun %s %s`",
                        name, newest.period, newest.error, name, newest.period)
        elif newest is not None:
            log.info("catch-up: job %s latest run: period %s, %s (%s)", name, newest.period,
                     newest.status, newest.process)
        if cut:
            log.warning("catch-up: job %s missed more than %d periods; running %s to %s only, "
                        "older ones need `voucher jobs run %s PERIOD`", name, max_periods,
                        periods[0], periods[-1], name)
        for period in periods:
            log.info("catch-up: job %s period %s never ran", name, period)
            with acting_as("scheduler"):
                run_once(db, name, period, spec.target, heartbeat_every=heartbeat_every)


def build_scheduler(settings: Any, db: Database, jobs: Mapping[str, JobSpec] | None = None, *,
                    heartbeat_every: float = HEARTBEAT_SECONDS,
                    stale_after: timedelta = STALE_AFTER,
                    reap_every: float = REAP_EVERY_SECONDS) -> BlockingScheduler:
    """The scheduler with one cron job per registry entry, the reaper and the catch-up pass.

    `jobs` defaults to JOBS above; schedules come from settings (VOUCHER_*_CRON), in
    settings.timezone (Asia/Shanghai). A bad crontab raises ValueError naming its variable.
    """
    from adapters.webhooks import deliver_until_idle
    from api.events import install as install_outbox
    from voucher.app import webhook_retry

    install_outbox()  # the jobs' changes raise events with the API's objects
    jobs = JOBS if jobs is None else jobs
    tz = ZoneInfo(settings.timezone)
    scheduler = BlockingScheduler(
        timezone=tz,
        executors={"default": ThreadPoolExecutor(max_workers=len(jobs) + 3)},
    )
    triggers = {name: cron_trigger(spec, settings, tz) for name, spec in jobs.items()}
    for name, spec in jobs.items():
        # A late fire still runs (no grace limit), a backlog runs once, never two at a time.
        scheduler.add_job(fire, triggers[name], args=[db, spec, triggers[name], heartbeat_every],
                          id=name, name=spec.description or name,
                          coalesce=True, misfire_grace_time=None, max_instances=1)
    scheduler.add_job(reap, "interval", seconds=reap_every, args=[db, stale_after],
                      id="_reap", name="mark crashed runs failed")
    # The webhook delivery worker (as `voucher webhooks`): one batch loop at a time per process;
    # deliveries are leased in the database, so any number of processes share them.
    scheduler.add_job(deliver_until_idle, "interval", seconds=WEBHOOKS_EVERY_SECONDS,
                      args=[db, webhook_retry(settings)], id="_webhooks", name="deliver webhooks",
                      coalesce=True, max_instances=1, misfire_grace_time=None)
    scheduler.add_job(catch_up, "date", args=[db, jobs, triggers, heartbeat_every, stale_after,
                                              settings.catch_up_periods],
                      id="_catch_up", name="catch up fires missed while down",
                      misfire_grace_time=None)
    return scheduler


def run_forever(scheduler: BlockingScheduler) -> None:
    """Run until SIGTERM or SIGINT; then stop firing and wait for runs in progress."""

    def _stop(signum, _frame):
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for job in scheduler.get_jobs():
            log.info("scheduled %s: %s", job.id, job.trigger)
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("stopping: no new runs; waiting for runs in progress")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if scheduler.running:
            scheduler.shutdown(wait=True)
        log.info("scheduler stopped")


def configure_logging(json_lines: bool) -> None:
    from kernel.logging import configure_logging as configure

    configure(json_lines)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # ours log each run
