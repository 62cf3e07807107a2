"""Job runs: claimed once per (job, period), failed runs re-run, crashed runs reaped."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from config.settings import Settings
from kernel.jobruns import (
    MINUTE_KEY,
    JobRun,
    JobSpec,
    claim,
    events,
    fail,
    finish,
    fire_day,
    get_run,
    minute_slot,
    month_before_last,
    previous_month,
    process_gone,
    reap_stale,
    rerun,
    run_once,
)
from tests import jobs_fixture
from voucher.cli import main
from voucher.scheduler import (
    JOBS,
    build_scheduler,
    catch_up,
    cron_trigger,
    fire,
    last_fire_time,
    missed_periods,
)

SH = ZoneInfo("Asia/Shanghai")


def runs(db) -> list[JobRun]:
    with db.session() as s:
        return list(s.scalars(select(JobRun).order_by(JobRun.id)))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- claiming -----------------------------------------------------------------------------

def test_a_period_is_claimed_once_per_job(db):
    with db.session() as s:
        first = claim(s, "reconcile", "2026-10", "host-a:1")
        assert first is not None and first.status == "running" and first.attempt == 1
        assert claim(s, "reconcile", "2026-10", "host-b:2") is None
        assert claim(s, "reconcile", "2026-11", "host-b:2") is not None
        assert claim(s, "statements", "2026-10", "host-b:2") is not None
    assert [(r.job, r.period, r.process) for r in runs(db)] == [
        ("reconcile", "2026-10", "host-a:1"), ("reconcile", "2026-11", "host-b:2"),
        ("statements", "2026-10", "host-b:2")]


def test_a_finished_period_is_not_claimed_again(db):
    with db.session() as s:
        run = claim(s, "reconcile", "2026-10")
        assert finish(s, run, {"claims": 3})
        assert claim(s, "reconcile", "2026-10") is None
    (row,) = runs(db)
    assert row.status == "succeeded" and row.result == {"claims": 3} and row.finished_at


def test_racing_claims_on_postgresql_have_one_winner(pg):
    """Sixteen threads, each its own connection, insert the same (job, period) at once."""
    barrier = threading.Barrier(16)
    won: list[JobRun] = []

    def race(i: int) -> None:
        with pg.db.session() as s:
            barrier.wait()
            run = claim(s, "reconcile", "2026-10", f"host:{i}")
            if run is not None:
                won.append(run)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert [(r.job, r.period, r.process) for r in runs(pg.db)] == [
        ("reconcile", "2026-10", won[0].process)]


# --- failure and re-runs ------------------------------------------------------------------

def test_a_failed_run_is_rerun_only_on_request_as_a_new_attempt(db):
    with db.session() as s:
        run = claim(s, "reconcile", "2026-10", "host-a:1")
        assert fail(s, run, "RuntimeError: database went away")
        assert claim(s, "reconcile", "2026-10") is None  # the scheduler does not retry on its own
        again = rerun(s, "reconcile", "2026-10", "host-b:2")
        assert again is not None and (again.attempt, again.status) == (2, "running")
        assert again.process == "host-b:2" and again.error is None and again.finished_at is None
        assert rerun(s, "reconcile", "2026-10", "host-c:3") is None  # it is running now


def test_rerun_of_a_succeeded_period_needs_force(db):
    with db.session() as s:
        finish(s, claim(s, "reconcile", "2026-10"))
        assert rerun(s, "reconcile", "2026-10") is None
        forced = rerun(s, "reconcile", "2026-10", force=True)
        assert forced is not None and forced.attempt == 2


def test_rerun_of_a_period_that_never_ran_claims_it(db):
    with db.session() as s:
        run = rerun(s, "statements", "2026-10")
    assert run is not None and run.attempt == 1


def test_an_attempt_taken_over_by_a_rerun_cannot_record_its_outcome(db):
    with db.session() as s:
        old = claim(s, "reconcile", "2026-10", "host-a:1")
        fail(s, get_run(s, "reconcile", "2026-10"), "no heartbeat")
        new = rerun(s, "reconcile", "2026-10", "host-b:2")
        assert not finish(s, old)  # attempt 1 finishing late must not overwrite attempt 2
        assert finish(s, new)
    (row,) = runs(db)
    assert (row.status, row.attempt, row.process) == ("succeeded", 2, "host-b:2")


def test_a_run_reaped_while_alive_records_what_it_actually_did(db):
    with db.session() as s:
        run = claim(s, "reconcile", "2026-10")
        s.execute(update(JobRun).values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
        s.commit()
        assert len(reap_stale(s, timedelta(minutes=2))) == 1
        assert finish(s, run)  # same attempt, nobody re-ran it: the truth wins
    assert runs(db)[0].status == "succeeded"


# --- run_once -----------------------------------------------------------------------------

def test_run_once_runs_the_function_and_records_success(db):
    seen = []
    run = run_once(db, "reconcile", "2026-10", lambda d, p: seen.append(p) or {"n": 1})
    assert seen == ["2026-10"]
    assert run.status == "succeeded" and run.result == {"n": 1}
    row = runs(db)[0]
    assert row.status == "succeeded" and row.finished_at >= row.started_at
    assert row.process == f"{socket.gethostname()}:{__import__('os').getpid()}"
    assert run_once(db, "reconcile", "2026-10", lambda d, p: seen.append(p)) is None
    assert seen == ["2026-10"]


def test_run_once_records_a_failure_and_does_not_raise(db):
    run = run_once(db, "statements", "2026-10", jobs_fixture.boom)
    assert run.status == "failed"
    row = runs(db)[0]
    assert (row.status, row.error) == ("failed", "RuntimeError: no data for 2026-10")


def test_a_job_whose_module_is_missing_fails_with_the_import_error(db):
    run = run_once(db, "statements", "2026-10", "billing.no_such_module:statements_job")
    assert run.status == "failed"
    assert run.error == "ModuleNotFoundError: No module named 'billing.no_such_module'"


def test_run_once_heartbeats_while_the_job_works(db):
    beats = []

    def slow(d, p):
        with d.session() as s:
            first = get_run(s, "pull", p).heartbeat_at
        threading.Event().wait(0.35)
        with d.session() as s:
            beats.append((first, get_run(s, "pull", p).heartbeat_at))

    assert run_once(db, "pull", "2026-10-01T10:15", slow, heartbeat_every=0.05).status == "succeeded"
    first, later = beats[0]
    assert later > first


def test_a_foreground_run_interrupted_by_ctrl_c_is_marked_failed(db):
    def interrupted(d, p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_once(db, "reconcile", "2026-10", interrupted)
    assert (runs(db)[0].status, runs(db)[0].error) == ("failed", "interrupted")


def test_job_finished_listeners_hear_every_run(db):
    heard = []

    def listener(job, status, duration):
        heard.append((job, status, duration >= 0))

    def skipped(job):
        heard.append((job, "skipped"))

    def broken(*_):
        raise ValueError("a broken listener must not break the run")

    events.on("job_finished", listener)
    events.on("job_finished", broken)
    events.on("job_skipped", skipped)
    try:
        run_once(db, "reconcile", "2026-10", lambda d, p: None)
        run_once(db, "reconcile", "2026-11", jobs_fixture.boom)
        run_once(db, "reconcile", "2026-10", lambda d, p: None)  # claimed already: not a run
    finally:
        events._listeners["job_finished"].remove(listener)
        events._listeners["job_finished"].remove(broken)
        events._listeners["job_skipped"].remove(skipped)
    assert heard == [("reconcile", "succeeded", True), ("reconcile", "failed", True),
                     ("reconcile", "skipped")]


# --- crash detection ----------------------------------------------------------------------

def test_reaping_marks_dead_or_silent_runs_failed_and_leaves_live_ones(db):
    host = socket.gethostname()
    now = datetime.now(UTC)
    with db.session() as s:
        claim(s, "reconcile", "2026-08", f"{host}:{dead_pid()}")  # this host, process gone
        claim(s, "reconcile", "2026-09", "other-host:4242")  # silent for ten minutes
        claim(s, "reconcile", "2026-10", "other-host:4343")  # beat a minute ago
        claim(s, "reconcile", "2026-11", f"{host}:{__import__('os').getpid()}")  # alive, fresh
        s.execute(update(JobRun).where(JobRun.period == "2026-09")
                  .values(heartbeat_at=now - timedelta(minutes=10)))
        s.execute(update(JobRun).where(JobRun.period == "2026-10")
                  .values(heartbeat_at=now - timedelta(minutes=1)))
        s.commit()
        reaped = reap_stale(s, timedelta(minutes=2))
        assert sorted(r.period for r in reaped) == ["2026-08", "2026-09"]
        assert reap_stale(s, timedelta(minutes=2)) == []
    by_period = {r.period: r for r in runs(db)}
    assert by_period["2026-08"].status == "failed"
    assert "is gone" in by_period["2026-08"].error
    assert by_period["2026-09"].status == "failed" and "no heartbeat" in by_period["2026-09"].error
    assert by_period["2026-10"].status == by_period["2026-11"].status == "running"


def test_only_a_process_on_this_host_is_judged_by_its_pid():
    host = socket.gethostname()
    assert process_gone(f"{host}:{dead_pid()}")
    assert not process_gone(f"{host}:{__import__('os').getpid()}")
    assert not process_gone(f"elsewhere:{dead_pid()}")  # other hosts: the heartbeat decides


# --- periods and schedules ----------------------------------------------------------------

def test_monthly_jobs_work_on_the_previous_shanghai_month():
    assert previous_month(datetime(2026, 12, 1, 2, 0, tzinfo=SH)) == "2026-11"
    assert previous_month(datetime(2026, 1, 1, 2, 0, tzinfo=SH)) == "2025-12"
    # 18:00 UTC on 30 November is already 1 December in Shanghai
    assert previous_month(datetime(2026, 11, 30, 18, 0, tzinfo=UTC)) == "2026-11"


def test_the_reconcile_job_is_daily_and_keyed_by_the_shanghai_day():
    """Every open period is re-run daily (docs/API.md#period-close): one run per day."""
    assert JOBS["reconcile"].period_for is fire_day
    trigger = cron_trigger(JOBS["reconcile"], Settings(), SH)
    fired = last_fire_time(trigger, datetime(2026, 12, 15, 9, 0, tzinfo=SH))
    assert fired == datetime(2026, 12, 15, 2, 0, tzinfo=SH)
    assert JOBS["reconcile"].period_for(fired) == "2026-12-15"
    # 18:00 UTC on 30 November is already 1 December in Shanghai
    assert fire_day(datetime(2026, 11, 30, 18, 0, tzinfo=UTC)) == "2026-12-01"
    assert JOBS["reconcile"].check_period("2026-12-15")
    for bad in ("2026-12", "2026-02-30", "1999-12-01", "2026-12-15T02:00"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            JOBS["reconcile"].check_period(bad)


def test_statements_work_on_the_month_before_last_reconciled_a_month_earlier():
    """Statements fired on 1 December are October's: reconciled on 1 November and reviewed
    since, not November's, reconciled two hours earlier with every claim still undecided."""
    assert JOBS["statements"].period_for is month_before_last
    assert month_before_last(datetime(2026, 12, 1, 4, 0, tzinfo=SH)) == "2026-10"
    assert month_before_last(datetime(2026, 1, 1, 4, 0, tzinfo=SH)) == "2025-11"
    assert month_before_last(datetime(2026, 2, 1, 4, 0, tzinfo=SH)) == "2025-12"
    assert month_before_last(datetime(2026, 3, 31, 23, 59, tzinfo=SH)) == "2026-01"
    assert month_before_last(datetime(2026, 11, 30, 20, 0, tzinfo=UTC)) == "2026-10"  # 1 Dec SH
    fired = last_fire_time(cron_trigger(JOBS["statements"], Settings(), SH),
                           datetime(2026, 12, 15, tzinfo=SH))
    assert JOBS["statements"].period_for(fired) == "2026-10"  # re-run daily by reconcile since 1 November


def test_pull_periods_are_the_fire_minute_in_shanghai():
    assert minute_slot(datetime(2026, 11, 28, 2, 15, 0, 300000, tzinfo=UTC)) == "2026-11-28T10:15"
    assert JOBS["pull"].period_for(datetime(2026, 11, 28, 2, 30, tzinfo=UTC)) == "2026-11-28T10:30"
    assert JOBS["pull"].check_period("2026-11-28T10:30")
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH:MM"):
        JOBS["pull"].check_period("2026-11")
    with pytest.raises(ValueError, match="YYYY-MM"):
        JOBS["reconcile"].check_period("2026-13")


def test_a_late_fire_runs_the_period_it_was_scheduled_for(db):
    """The period comes from the schedule's last fire time, not from the clock."""
    trigger = cron_trigger(JOBS["reconcile"], MONTHLY, SH)
    assert last_fire_time(trigger, datetime(2026, 12, 1, 2, 0, tzinfo=SH)) == \
        datetime(2026, 12, 1, 2, 0, tzinfo=SH)
    assert last_fire_time(trigger, datetime(2026, 12, 31, 23, 59, tzinfo=SH)) == \
        datetime(2026, 12, 1, 2, 0, tzinfo=SH)
    assert last_fire_time(trigger, datetime(2026, 12, 1, 1, 59, tzinfo=SH)) == \
        datetime(2026, 11, 1, 2, 0, tzinfo=SH)
    minute = cron_trigger(JOBS["reconcile"], Settings(reconcile_cron="* * * * *"), SH)
    assert last_fire_time(minute, datetime(2026, 12, 1, 2, 7, 59, 900000, tzinfo=SH)) == \
        datetime(2026, 12, 1, 2, 7, tzinfo=SH)
    never = cron_trigger(JOBS["reconcile"], Settings(reconcile_cron="0 0 29 2 *"), SH)
    assert last_fire_time(never, datetime(2026, 12, 1, tzinfo=SH)) is None


def test_a_fire_claims_its_period_and_later_fires_of_the_same_period_skip(db):
    seen = []
    spec = JobSpec("reconcile", "reconcile_cron", lambda d, p: seen.append(p), previous_month)
    trigger = cron_trigger(spec, Settings(reconcile_cron="* * * * *"), SH)
    fire(db, spec, trigger, 15)
    fire(db, spec, trigger, 15)  # every minute, but the period is a month: once
    assert seen == [previous_month(datetime.now(UTC))]


def test_the_scheduler_takes_schedules_from_settings_in_shanghai_time(db):
    settings = Settings.from_env(env={"VOUCHER_RECONCILE_CRON": "30 3 2 * *"})
    sched = build_scheduler(settings, db)
    jobs = {j.id: j for j in sched.get_jobs()}
    assert set(jobs) == {"pull", "reconcile", "statements", "idempotency-expiry", "redemption-expiry",
                         "settlements", "_reap", "_catch_up", "_webhooks"}
    assert str(sched.timezone) == "Asia/Shanghai"
    fields = {f.name: str(f) for f in jobs["reconcile"].trigger.fields}
    assert (fields["day"], fields["hour"], fields["minute"]) == ("2", "3", "30")
    assert {f.name: str(f) for f in jobs["pull"].trigger.fields}["minute"] == "*/15"
    statements = {f.name: str(f) for f in jobs["statements"].trigger.fields}
    assert (statements["day"], statements["hour"], statements["minute"]) == ("1", "4", "0")
    assert {f.name: str(f) for f in jobs["idempotency-expiry"].trigger.fields}["minute"] == "40"
    settle = {f.name: str(f) for f in jobs["settlements"].trigger.fields}
    assert (settle["month"], settle["day"], settle["hour"]) == ("1,4,7,10", "1", "5")
    for name in ("pull", "reconcile", "statements", "idempotency-expiry", "redemption-expiry", "settlements"):
        assert jobs[name].coalesce and jobs[name].misfire_grace_time is None
        assert jobs[name].max_instances == 1


def test_a_bad_schedule_names_its_variable(db):
    with pytest.raises(ValueError, match="VOUCHER_STATEMENTS_CRON='every day'"):
        build_scheduler(Settings(statements_cron="every day"), db)


def test_catch_up_runs_a_missed_period_once_and_leaves_failed_ones_for_rerun(db):
    seen = []
    jobs = {
        "reconcile": JobSpec("reconcile", "reconcile_cron", lambda d, p: seen.append(("r", p)),
                             previous_month, catch_up=True),
        "statements": JobSpec("statements", "statements_cron",
                              lambda d, p: seen.append(("s", p)), previous_month, catch_up=True),
        "pull": JobSpec("pull", "pull_cron", lambda d, p: seen.append(("p", p)), minute_slot,
                        MINUTE_KEY),
    }
    settings = Settings()
    triggers = {n: cron_trigger(s, settings, SH) for n, s in jobs.items()}
    period = previous_month(last_fire_time(triggers["reconcile"], datetime.now(UTC)))
    with db.session() as s:
        fail(s, claim(s, "statements", period), "RuntimeError: printer on fire")
    catch_up(db, jobs, triggers, 15, timedelta(minutes=2))
    catch_up(db, jobs, triggers, 15, timedelta(minutes=2))  # a second start: nothing new
    assert seen == [("r", period)]
    assert {(r.job, r.status) for r in runs(db)} == {("reconcile", "succeeded"),
                                                     ("statements", "failed")}


# The catch-up machinery, shown on monthly schedules (reconcile itself is daily now).
MONTHLY = Settings(reconcile_cron="0 2 1 * *")


def _monthly(seen: list, name: str = "reconcile", period_for=previous_month) -> JobSpec:
    return JobSpec(name, f"{name}_cron", lambda d, p: seen.append((name, p)), period_for,
                   catch_up=True)


def test_missed_periods_walk_back_to_the_newest_period_that_ran(db):
    now = datetime(2026, 12, 15, 9, 0, tzinfo=SH)  # fires of 1 Dec, 1 Nov, 1 Oct... at 02:00/04:00
    reconcile, statements = _monthly([]), _monthly([], "statements", month_before_last)
    triggers = {s.name: cron_trigger(s, MONTHLY, SH) for s in (reconcile, statements)}
    with db.session() as s:
        finish(s, claim(s, "reconcile", "2026-08"))
        fail(s, claim(s, "statements", "2026-08"), "RuntimeError: printer on fire")
        missed, newest, cut = missed_periods(s, reconcile, triggers["reconcile"], now)
        assert (missed, newest.period, cut) == (["2026-09", "2026-10", "2026-11"], "2026-08", False)
        missed, newest, cut = missed_periods(s, statements, triggers["statements"], now)
        assert (missed, newest.status, cut) == (["2026-09", "2026-10"], "failed", False)
        missed, _, cut = missed_periods(s, reconcile, triggers["reconcile"], now, limit=2)
        assert (missed, cut) == (["2026-10", "2026-11"], True)  # the newest two, oldest first
        finish(s, claim(s, "reconcile", "2026-11"))
        assert missed_periods(s, reconcile, triggers["reconcile"], now)[0] == []
        # A job that never ran (a new deployment) has nothing older to recover.
        fresh = JobSpec("fresh", "reconcile_cron", reconcile.target, previous_month, catch_up=True)
        assert missed_periods(s, fresh, triggers["reconcile"], now)[:2] == (["2026-11"], None)


def latest_fires(trigger, n: int) -> list[datetime]:
    """The trigger's last n fire times before now, newest first."""
    fires = [last_fire_time(trigger, datetime.now(UTC))]
    while len(fires) < n:
        fires.append(last_fire_time(trigger, fires[-1] - timedelta(seconds=1)))
    return fires


def test_catch_up_runs_every_month_missed_while_down_oldest_first_once_each(db):
    """The scheduler was down across two monthly fires: both months run, each once."""
    seen: list = []
    jobs = {"reconcile": _monthly(seen), "statements": _monthly(seen, "statements", month_before_last)}
    triggers = {n: cron_trigger(s, MONTHLY, SH) for n, s in jobs.items()}
    periods = {n: [jobs[n].period_for(f) for f in latest_fires(triggers[n], 3)] for n in jobs}
    with db.session() as s:  # both ran three fires ago; the two fires since were missed
        finish(s, claim(s, "reconcile", periods["reconcile"][2]))
        finish(s, claim(s, "statements", periods["statements"][2]))
    catch_up(db, jobs, triggers, 15, timedelta(minutes=2))
    catch_up(db, jobs, triggers, 15, timedelta(minutes=2))  # a second start: nothing new
    expected = [(n, p) for n in ("reconcile", "statements") for p in periods[n][1::-1]]
    assert seen == expected
    assert [(r.job, r.period, r.status, r.attempt) for r in runs(db)][2:] == [
        (n, p, "succeeded", 1) for n, p in expected]


def test_schedulers_catching_up_together_run_each_missed_period_once(pg):
    """Four schedulers start at once on PostgreSQL after a long outage: every period once."""
    seen: list = []
    jobs = {"reconcile": _monthly(seen)}
    triggers = {"reconcile": cron_trigger(jobs["reconcile"], MONTHLY, SH)}
    periods = [previous_month(f) for f in latest_fires(triggers["reconcile"], 6)]
    with pg.db.session() as s:
        finish(s, claim(s, "reconcile", periods[-1]))
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        catch_up(pg.db, jobs, triggers, 15, timedelta(minutes=2))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [("reconcile", p) for p in sorted(periods[:-1])]
    assert sorted((r.period, r.status, r.attempt) for r in runs(pg.db)) == sorted(
        [(periods[-1], "succeeded", 1)] + [(p, "succeeded", 1) for p in periods[:-1]])


def test_catch_up_is_bounded_by_the_catch_up_periods_setting(db):
    seen: list = []
    jobs = {"reconcile": _monthly(seen)}
    triggers = {"reconcile": cron_trigger(jobs["reconcile"], MONTHLY, SH)}
    with db.session() as s:
        finish(s, claim(s, "reconcile", "2020-01"))  # years ago
    catch_up(db, jobs, triggers, 15, timedelta(minutes=2), 3)
    latest = previous_month(last_fire_time(triggers["reconcile"], datetime.now(UTC)))
    assert len(seen) == 3 and seen[-1] == ("reconcile", latest)
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    assert Settings.from_env(env={"VOUCHER_CATCH_UP_PERIODS": "5"}).catch_up_periods == 5
    assert Settings().catch_up_periods == 12
    sched = build_scheduler(Settings(catch_up_periods=4), db)
    assert {j.id: j for j in sched.get_jobs()}["_catch_up"].args[-1] == 4


# --- HTTP ---------------------------------------------------------------------------------

def _three_runs(db):
    run_once(db, "reconcile", "2026-09", lambda d, p: {"claims": 2})
    run_once(db, "reconcile", "2026-10", jobs_fixture.boom)
    with db.session() as s:
        claim(s, "pull", "2026-11-28T10:15", "host-z:77")


def matches_openapi(api, path, resp):
    """The real answer validates against the schema /openapi.json documents for it."""
    import jsonschema

    spec = api.get("/openapi.json").json
    schema = spec["paths"][path]["get"]["responses"][str(resp.status_code)]["content"][
        "application/json"]["schema"]
    jsonschema.Draft202012Validator({"components": spec["components"], **schema}).validate(resp.json)


def test_finance_lists_job_runs_with_filters_and_cursor(db, finance):
    _three_runs(db)
    body = finance.get("/v1/job-runs").json
    assert body["object"] == "list" and body["has_more"] is False
    assert [(r["job"], r["period"], r["status"]) for r in body["data"]] == [
        ("reconcile", "2026-09", "succeeded"), ("reconcile", "2026-10", "failed"),
        ("pull", "2026-11-28T10:15", "running")]
    first = body["data"][0]
    assert set(first) >= {"object", "id", "job", "period", "status", "started_at",
                          "finished_at", "process", "error"}
    assert first["object"] == "job_run" and first["id"].startswith("jr_")
    assert first["started_at"].endswith("Z") and first["finished_at"].endswith("Z")
    assert first["error"] is None and first["result"] == {"claims": 2}
    assert body["data"][1]["error"] == "RuntimeError: no data for 2026-10"
    assert body["data"][2]["finished_at"] is None and body["data"][2]["process"] == "host-z:77"

    failed = finance.get("/v1/job-runs?status=failed").json["data"]
    assert [r["period"] for r in failed] == ["2026-10"]
    assert [r["job"] for r in finance.get("/v1/job-runs?job=pull").json["data"]] == ["pull"]
    assert [r["status"] for r in finance.get("/v1/job-runs?period=2026-09").json["data"]] == \
        ["succeeded"]

    page = finance.get("/v1/job-runs?limit=2").json
    assert page["has_more"] is True and len(page["data"]) == 2
    rest = finance.get(f"/v1/job-runs?limit=2&starting_after={page['data'][1]['id']}").json
    assert rest["has_more"] is False and [r["job"] for r in rest["data"]] == ["pull"]

    one = finance.get(f"/v1/job-runs/{first['id']}")
    assert one.status_code == 200 and one.json == first
    matches_openapi(finance, "/v1/job-runs", finance.get("/v1/job-runs"))
    matches_openapi(finance, "/v1/job-runs/{run_id}", one)
    assert finance.get("/v1/job-runs/jr_999999").status_code == 404
    assert finance.get("/v1/job-runs/nope").status_code == 404


def test_job_run_queries_are_checked(db, finance):
    bad = finance.get("/v1/job-runs?status=done")
    assert bad.status_code == 400 and bad.json["error"]["param"] == "status"
    cursor = finance.get("/v1/job-runs?starting_after=42")
    assert cursor.status_code == 400 and cursor.json["error"]["param"] == "starting_after"
    assert finance.get("/v1/job-runs?limit=0").status_code == 400


def test_job_runs_are_for_finance_only(db, client, as_key):
    assert client.get("/v1/job-runs").status_code == 401
    assert client.get("/v1/job-runs", headers={"Authorization": "Bearer nope"}).status_code == 401
    provider = as_key("provider", "prov-a")
    denied = provider.get("/v1/job-runs")
    assert denied.status_code == 403 and denied.json["error"]["code"] == "forbidden"
    assert as_key("enterprise", "91330402MA0000001X").get("/v1/job-runs/jr_1").status_code == 403


# --- command line -------------------------------------------------------------------------

@pytest.fixture
def cli(db, database_url, monkeypatch):
    monkeypatch.setenv("VOUCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("VOUCHER_JOBS_MODULE", "tests.jobs_fixture:MONTHLY_JOBS")
    jobs_fixture.ensure_tables(db)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_cli_runs_a_period_once_and_reruns_only_on_request(db, cli):
    ran = cli("jobs", "run", "reconcile", "2026-10")
    assert ran.exit_code == 0, ran.output
    assert "reconcile 2026-10 succeeded (attempt 1" in ran.output
    again = cli("jobs", "run", "reconcile", "2026-10")
    assert again.exit_code == 1 and "is succeeded" in again.output
    assert "voucher jobs rerun reconcile 2026-10" in again.output
    refused = cli("jobs", "rerun", "reconcile", "2026-10")
    assert refused.exit_code == 1 and "--force" in refused.output
    forced = cli("jobs", "rerun", "reconcile", "2026-10", "--force")
    assert forced.exit_code == 0 and "attempt 2" in forced.output
    assert len(jobs_fixture.rows(db, "test_job_effect")) == 2
    listed = cli("jobs", "list")
    assert listed.exit_code == 0 and "reconcile\t2026-10\tsucceeded\tattempt=2" in listed.output


def test_cli_rerun_reaps_a_crashed_run_and_completes_it(db, cli):
    with db.session() as s:
        claim(s, "reconcile", "2026-10", f"{socket.gethostname()}:{dead_pid()}")
    busy = cli("jobs", "run", "reconcile", "2026-10")
    assert busy.exit_code == 1 and "is running" in busy.output
    done = cli("jobs", "rerun", "reconcile", "2026-10")
    assert done.exit_code == 0, done.output
    assert "marked failed: reconcile 2026-10" in done.output and "attempt 2" in done.output
    assert jobs_fixture.rows(db, "test_job_effect") == [
        ("reconcile", "2026-10", __import__("os").getpid())]


def test_cli_refuses_unknown_jobs_and_malformed_periods(cli):
    unknown = cli("jobs", "run", "payroll", "2026-10")
    assert unknown.exit_code == 1 and "no such job: payroll" in unknown.output
    malformed = cli("jobs", "run", "reconcile", "October")
    assert malformed.exit_code == 1 and "not a reconcile period" in malformed.output


def test_cli_reports_a_failed_run_and_exits_non_zero(db, cli):
    failed = cli("jobs", "run", "statements", "2026-10")
    assert failed.exit_code == 1
    assert "statements 2026-10 failed: RuntimeError: no data for 2026-10" in failed.output
    assert [(r.job, r.status) for r in runs(db)] == [("statements", "failed")]
