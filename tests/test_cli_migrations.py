"""Commands on a database that was never migrated (or is behind) say what to run (issue 15.9)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from voucher.cli import main
from voucher.migrate import upgrade

COMMANDS = (["demo"], ["serve"], ["reconcile", "2026-10"], ["keys", "create", "--role", "finance"],
            ["jobs", "list"], ["jobs", "run", "reconcile", "2026-10"], ["scheduler"],
            ["audit", "verify"], ["report", "2026-10"], ["ledger", "verify"])


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("VOUCHER_DATABASE_URL", url)
    monkeypatch.delenv("VOUCHER_JOBS_MODULE", raising=False)

    def no_exec(*args):  # `serve` past the check would replace this process with gunicorn
        raise AssertionError(f"exec {args}")

    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.setattr("voucher.scheduler.run_forever", no_exec)  # nor run until killed
    return url


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_a_command_on_a_never_migrated_database_says_to_upgrade(fresh, args):
    r = _run(*args)
    assert r.exit_code == 1, r.output
    assert "database not migrated: run 'voucher db upgrade'" in r.output
    assert "Traceback" not in r.output and "no such table" not in r.output


def test_the_real_command_prints_one_line_and_no_traceback(fresh):
    voucher = os.path.join(os.path.dirname(sys.executable), "voucher")  # the installed script
    done = subprocess.run([voucher, "demo"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VOUCHER_DATABASE_URL": fresh})
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: database not migrated: run 'voucher db upgrade'", done.stderr


def test_help_and_db_upgrade_work_on_a_fresh_database_and_then_commands_run(fresh):
    assert _run("serve", "--help").exit_code == 0
    assert _run("jobs", "list", "--help").exit_code == 0
    up = _run("db", "upgrade")
    assert up.exit_code == 0, up.output
    listed = _run("jobs", "list")
    assert listed.exit_code == 0 and "no job runs" in listed.output


def test_an_outdated_or_foreign_schema_is_named(fresh):
    upgrade(fresh, "0005")
    r = _run("jobs", "list")
    assert r.exit_code == 1 and "database schema outdated" in r.output
    assert "run 'voucher db upgrade'" in r.output
    upgrade(fresh)
    engine = create_engine(fresh)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('9999_from_the_future')"))
    engine.dispose()
    r = _run("jobs", "list")
    assert r.exit_code == 1 and "9999_from_the_future, unknown to this version" in r.output


def test_an_unreachable_database_is_one_line_too(tmp_path, monkeypatch):
    monkeypatch.setenv("VOUCHER_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    r = _run("jobs", "list")
    assert r.exit_code == 1 and r.output.startswith("Error: database unavailable:"), r.output
