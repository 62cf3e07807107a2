"""Engine, session factory and the column types that keep money and quantities exact."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, Select, String, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Autoincrementing 64-bit ids; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")
# A billing month, "YYYY-MM" (kernel/periods.py): the `period` columns.
Month = String(7)
MAX_ROW_ID = 2**63 - 1
_ROW_DIGITS = re.compile(r"[0-9]+")


class NoSuchRow(ValueError):
    """A well-formed public id whose number no row can have (beyond a 64-bit id)."""


def parse_row_id(prefix: str, value: str, what: str) -> int:
    """The row id in a public id (`prefix` + ASCII digits, e.g. clm_17).

    ValueError when malformed (str.isdigit() would let '²' and '٢' through); NoSuchRow, a
    ValueError too, when beyond a 64-bit id: such an id names nothing (404), and the
    database would refuse it as a parameter.
    """
    digits = value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else ""
    if not _ROW_DIGITS.fullmatch(digits):
        raise ValueError(f"{value!r} is not a {what} id ({prefix}…)")
    if len(digits) > 19 or int(digits) > MAX_ROW_ID:
        raise NoSuchRow(f"No such {what}: {value!r}")
    return int(digits)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class MicroDecimal(TypeDecorator):
    """A Decimal with 6 fractional digits stored as a scaled 64-bit integer.

    SQLite has no exact decimal type (SQLAlchemy's Numeric goes through float there), so
    quantities are kept as integer millionths on every database: exact, summable in SQL.
    """

    impl = BigInteger
    cache_ok = True
    SCALE = 10**6

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        scaled = Decimal(value) * self.SCALE
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value} has more than 6 fractional digits")
        return int(scaled)

    def process_result_value(self, value, dialect):
        return None if value is None else from_micros(value)


def from_micros(value: int) -> Decimal:
    return (Decimal(int(value)) / MicroDecimal.SCALE).quantize(Decimal("0.000001"))


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes, stored in UTC; naive input is a programming error."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def where_given(stmt: Select, *filters: tuple[Any, Any]) -> Select:
    """`stmt` narrowed to `column == value` for each (column, value) whose value is given
    (a list's optional query filters: None or empty means "any")."""
    for column, value in filters:
        if value:
            stmt = stmt.where(column == value)
    return stmt


def keyset_page(session: Session, stmt: Select, key: Any, limit: int,
                after: Any = None) -> tuple[list[Any], bool]:
    """One page of a keyset-paged list (docs/API.md#pagination): the rows of `stmt` whose `key`
    is above `after`, in `key` order, at most `limit` of them, and whether more follow."""
    if after is not None:
        stmt = stmt.where(key > after)
    rows = list(session.scalars(stmt.order_by(key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def utcnow() -> datetime:
    return datetime.now(UTC)


class Timestamps:
    """Mixin: `created_at`, and `updated_at` set again by every ORM update (the last columns)."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
    # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's deferred BEGIN.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
    # instead of one failing with "database is locked" when it upgrades a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


class Database:
    """One engine and session factory per app (no module-level engine)."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        return self.Session()

    def dispose(self) -> None:
        self.engine.dispose()
