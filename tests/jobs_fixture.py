"""Job registries for scheduler tests, loaded by `voucher` subprocesses via VOUCHER_JOBS_MODULE.

The test job records two things in tables of its own, so a test can tell a run that started
from one whose effect stuck:
- `test_job_started`: one row per start, committed before any work (a killed run leaves it);
- `test_job_effect`: one row per run, written in one transaction that stays open for
  VOUCHER_TEST_JOB_SLEEP seconds (a run killed meanwhile leaves nothing, like reconciliation).
Neither table has a unique key: a period run twice shows up as two rows.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from kernel.db import Database
from kernel.jobruns import MINUTE_KEY, JobSpec, minute_slot, previous_month

TABLES = ("test_job_started", "test_job_effect")


def ensure_tables(db: Database) -> None:
    with db.engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} "
                              "(job VARCHAR(64), period VARCHAR(32), pid INTEGER)"))
            conn.execute(text(f"DELETE FROM {table}"))


def rows(db: Database, table: str) -> list[tuple[str, str, int]]:
    assert table in TABLES
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT job, period, pid FROM {table}"))]


def record_run(db: Database, period: str, job: str = "reconcile") -> dict:
    pid = os.getpid()
    values = {"job": job, "period": period, "pid": pid}
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO test_job_started VALUES (:job, :period, :pid)"), values)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO test_job_effect VALUES (:job, :period, :pid)"), values)
        time.sleep(float(os.environ.get("VOUCHER_TEST_JOB_SLEEP", "0")))
    return {"pid": pid}


def boom(db: Database, period: str) -> None:
    raise RuntimeError(f"no data for {period}")


# "reconcile" driven by VOUCHER_RECONCILE_CRON, one period per minute: a `* * * * *` schedule
# gives a new period at every boundary (the real reconcile's periods are months).
MINUTE_JOBS = {
    "reconcile": JobSpec("reconcile", "reconcile_cron", "tests.jobs_fixture:record_run",
                         minute_slot, MINUTE_KEY, catch_up=True),
}

# The real reconcile's schedule and periods (the previous month), with the test job's body;
# statements always fails.
MONTHLY_JOBS = {
    "reconcile": JobSpec("reconcile", "reconcile_cron", "tests.jobs_fixture:record_run",
                         previous_month, catch_up=True),
    "statements": JobSpec("statements", "statements_cron", "tests.jobs_fixture:boom",
                          previous_month),
}


def slow_reconcile(db: Database, period: str) -> dict:
    """The real reconciliation of `period`, its transaction held open VOUCHER_TEST_JOB_SLEEP s."""
    from billing.policy_file import load_policy
    from billing.reconciliation import reconcile

    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO test_job_started VALUES ('reconcile', :period, :pid)"),
                     {"period": period, "pid": os.getpid()})
    with db.session() as session, session.begin():
        run, _ = reconcile(session, load_policy(), period)
        session.flush()
        time.sleep(float(os.environ.get("VOUCHER_TEST_JOB_SLEEP", "0")))
        return dict(run.summary)


# The real reconciliation, slowed down so a test can kill it mid-transaction.
RECONCILE_JOBS = {
    "reconcile": JobSpec("reconcile", "reconcile_cron", "tests.jobs_fixture:slow_reconcile",
                         previous_month, catch_up=True),
}
