"""`voucher scheduler` and `voucher jobs list|run|rerun|reap`: thin commands over kernel.jobruns."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from kernel.jobruns import STALE_AFTER, JobSpec
from voucher.cli_settings import settings as cli_settings

STALE_SECONDS = int(STALE_AFTER.total_seconds())


def registry() -> dict[str, JobSpec]:
    """The job registry: voucher.scheduler.JOBS, or "module:NAME" from VOUCHER_JOBS_MODULE (tests)."""
    from kernel.jobruns import load_registry
    from voucher.scheduler import JOBS

    path = cli_settings().jobs_module  # VOUCHER_JOBS_MODULE: a test seam
    return load_registry(path) if path else JOBS


def _spec(job: str, period: str | None = None) -> JobSpec:
    jobs = registry()
    if job not in jobs:
        raise click.ClickException(f"no such job: {job} (one of {', '.join(jobs)})")
    if period is not None:
        try:
            jobs[job].check_period(period)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    return jobs[job]


def _database():
    from kernel.db import Database

    return Database(cli_settings().database_url)


@click.command()
@click.option("--heartbeat", default=15.0, show_default=True, type=float,
              help="seconds between heartbeats of a running job")
@click.option("--stale-after", default=STALE_SECONDS, show_default=True, type=int,
              help="seconds without a heartbeat before a run counts as crashed")
@click.option("--metrics-port", default=None, type=int,
              help="serve Prometheus /metrics on this port (job run counts and durations)")
def scheduler(heartbeat: float, stale_after: int, metrics_port: int | None) -> None:
    """Run the scheduled jobs in the foreground until SIGTERM (any number of processes)."""
    from voucher.scheduler import build_scheduler, configure_logging, run_forever

    settings = cli_settings()
    configure_logging(settings.log_json)
    if metrics_port:
        from api.metrics import start_metrics_server

        start_metrics_server(metrics_port, multiproc_dir=settings.prometheus_multiproc_dir)
    try:
        sched = build_scheduler(settings, _database(), registry(), heartbeat_every=heartbeat,
                                stale_after=timedelta(seconds=stale_after))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    run_forever(sched)


@click.group()
def jobs() -> None:
    """Scheduled job runs: list, run or re-run one (job, period)."""


@jobs.command("list")
@click.option("--job", default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
def jobs_list(job: str | None, limit: int) -> None:
    """The latest runs, newest first."""
    from kernel.jobruns import recent_runs

    with _database().session() as session:
        runs = recent_runs(session, limit, job)
    for r in runs:
        finished = r.finished_at.isoformat() if r.finished_at else "-"
        line = (f"jr_{r.id}\t{r.job}\t{r.period}\t{r.status}\tattempt={r.attempt}\t"
                f"{r.started_at.isoformat()}\t{finished}\t{r.process}")
        click.echo(line + (f"\t{r.error}" if r.error else ""))
    if not runs:
        click.echo("no job runs")


def _run(job: str, period: str, again: bool, force: bool = False) -> None:
    from kernel.jobruns import get_run, run_once

    spec = _spec(job, period)
    db = _database()
    run = run_once(db, job, period, spec.target, again=again, force=force)
    if run is None:
        with db.session() as session:
            existing = get_run(session, job, period)
        state = (f"{existing.status} (attempt {existing.attempt}, {existing.process})"
                 if existing else "claimed by another process")
        hint = ("wait for it, or for `voucher jobs reap` once its process is gone"
                if existing and existing.status == "running"
                else "`voucher jobs rerun --force` runs it again" if again
                else f"`voucher jobs rerun {job} {period}` runs it again")
        raise click.ClickException(f"{job} {period} is {state}; {hint}")
    if run.status != "succeeded":
        raise click.ClickException(f"{job} {period} failed: {run.error}")
    click.echo(f"{job} {period} succeeded (attempt {run.attempt}, jr_{run.id})")
    if run.result is not None:
        click.echo(json.dumps(run.result, ensure_ascii=False, sort_keys=True))


@jobs.command("run")
@click.argument("job")
@click.argument("period")
def jobs_run(job: str, period: str) -> None:
    """Claim (JOB, PERIOD) and run it now, unless some process already did."""
    _run(job, period, again=False)


@jobs.command("rerun")
@click.argument("job")
@click.argument("period")
@click.option("--force", is_flag=True, help="also re-run a period that succeeded")
@click.option("--stale-after", default=STALE_SECONDS, show_default=True, type=int,
              help="seconds without a heartbeat before a running run counts as crashed")
def jobs_rerun(job: str, period: str, force: bool, stale_after: int) -> None:
    """Run a failed (or crashed) period again, in the foreground, as a new attempt."""
    from kernel.jobruns import reap_stale

    _spec(job, period)
    with _database().session() as session:
        for r in reap_stale(session, timedelta(seconds=stale_after)):
            click.echo(f"marked failed: {r.job} {r.period}: {r.error}")
    _run(job, period, again=True, force=force)


@jobs.command("reap")
@click.option("--stale-after", default=STALE_SECONDS, show_default=True, type=int)
def jobs_reap(stale_after: int) -> None:
    """Mark failed the running runs whose process died or whose heartbeat stopped."""
    from kernel.jobruns import reap_stale

    with _database().session() as session:
        reaped = reap_stale(session, timedelta(seconds=stale_after))
    for r in reaped:
        click.echo(f"marked failed: {r.job} {r.period}: {r.error}")
    click.echo(f"{len(reaped)} run(s) marked failed")
