"""Fixtures: every database test runs on SQLite and, when VOUCHER_TEST_DATABASE_URL is set,
again on PostgreSQL, each in a database the suite creates and drops itself."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from config.settings import Settings
from kernel.db import Base, Database
from kernel.keys import issue_key
from voucher.app import create_app
from voucher.migrate import upgrade

PG_URL = os.environ.get("VOUCHER_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SHARED = Path(__file__).resolve().parents[2] / "shared"


def create_pg_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"voucher_test_{uuid.uuid4().hex[:10]}"
    url = make_url(admin_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'voucher.db'}"
        upgrade(url)
        yield url
        return
    name, url = create_pg_database(PG_URL)
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(PG_URL, name)


@pytest.fixture(scope="session")
def database(database_url):
    db = Database(database_url)
    yield db
    db.dispose()


def truncate_all(db: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def db(database, request):
    truncate_all(database)
    yield database
    # The ledger invariants hold after every scenario of the suite, not only in its own tests.
    if "tampers_with_ledger" not in request.keywords:
        from billing.ledger import verify

        with database.session() as session:
            report = verify(session)
        assert report.ok, f"ledger invariants broken after {request.node.name}: {report.breaches}"


# The suite pushes far faster than any provider may: push limits are off unless a test sets
# them (tests/test_rate_limits.py); every other default is the shipped one.
NO_PUSH_LIMITS = {"push_requests_per_second": 0, "push_records_per_second": 0}


@pytest.fixture
def settings(database_url):
    return Settings.from_env(env={}, database_url=database_url, **NO_PUSH_LIMITS)


@pytest.fixture
def app(db, settings):
    return create_app(settings, database=db)


class Api:
    """A test client that speaks JSON with one key's Authorization header."""

    def __init__(self, client, key: str | None) -> None:
        self.client = client
        self.key = key

    def _headers(self, headers):
        h = dict(headers or {})
        if self.key:
            h.setdefault("Authorization", f"Bearer {self.key}")
        return h

    def get(self, url, **kw):
        return self.client.get(url, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, url, json=None, **kw):
        return self.client.post(url, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def patch(self, url, json=None, **kw):
        return self.client.patch(url, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, url, json=None, **kw):
        return self.client.delete(url, json=json, headers=self._headers(kw.pop("headers", None)), **kw)


def new_key(db: Database, role: str, subject: str | None = None) -> str:
    with db.session() as session, session.begin():
        _, plain = issue_key(session, role, subject)
    return plain


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def finance(client, db):
    return Api(client, new_key(db, "finance"))


@pytest.fixture
def as_key(client, db):
    """as_key(role, subject) -> Api acting with a fresh key of that role."""
    return lambda role, subject=None: Api(client, new_key(db, role, subject))


# --- PostgreSQL-only tests (concurrency, locking): always on PostgreSQL, never skipped. ---
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_url():
    admin = PG_URL or DEFAULT_PG
    name, url = create_pg_database(admin)
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(admin, name)


class World:
    """An app on its own database with helpers to act as any role."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Database(url)
        truncate_all(self.db)
        self.app = create_app(Settings.from_env(env={}, database_url=url, **NO_PUSH_LIMITS),
                              database=self.db)
        self.client = self.app.test_client()
        self.finance = Api(self.client, new_key(self.db, "finance"))

    def as_key(self, role: str, subject: str | None = None) -> Api:
        return Api(self.client, new_key(self.db, role, subject))


@pytest.fixture
def pg(pg_url):
    world = World(pg_url)
    yield world
    world.db.dispose()


# --- No API key in any log line of the whole session (docs/SECURITY.md). ---
class KeyLeakWatch(logging.Handler):
    """Remembers every log record whose message, arguments or extras hold an API key."""

    KEY = re.compile(r"vch_[0-9a-f]{16}_[A-Za-z0-9_-]{16,}")

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.seen = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = f"{record.getMessage()} {record.__dict__!r}"
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if self.KEY.search(text):
            self.leaks.append(f"{record.name}: {record.getMessage()[:200]}")


@pytest.fixture(scope="session", autouse=True)
def no_key_in_logs():
    watch = KeyLeakWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    yield watch
    root.removeHandler(watch)
    assert not watch.leaks, f"API keys were logged: {watch.leaks}"


@pytest.fixture(params=BACKENDS)
def fresh_url(request, tmp_path):
    """An empty, never-migrated database on each backend (migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mig.db'}"
        return
    name, url = create_pg_database(PG_URL)
    try:
        yield url
    finally:
        drop_pg_database(PG_URL, name)
