"""Single-statement reads for hot request paths: one round trip, nothing else.

A pooled SQLAlchemy checkout costs a round trip of its own before the query (the pool's
pre-ping), and a transaction adds BEGIN and ROLLBACK; for a read that is one statement
those are two to four round trips around one. On PostgreSQL a hot read here runs on one
long-lived autocommit psycopg connection per thread instead: the statement alone goes to
the server (prepared there after a few uses, psycopg's default). Robustness is what the
pre-ping gave: a read that fails because the connection broke (a database restart, an
idle timeout) reconnects and runs again once; if the database is down, the error is
SQLAlchemy's OperationalError, which the app answers with 503 like any other.

Rows are psycopg named tuples of the driver's own values: strings, integers, timestamps
(only tested for NULL), so keep hot reads to such columns. On SQLite, where there is no
network round trip, reads go through the engine as usual.

The connections belong to the Database: closed when its engine is disposed, or when the
Database is garbage collected; a process forked after a read makes its own.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from sqlalchemy import Executable, event
from sqlalchemy.exc import DBAPIError

from voucher.db import Database


class HotReads:
    def __init__(self, database: Database) -> None:
        self.engine = database.engine  # not the Database: it may be collected, closing these
        self.postgresql = database.dialect == "postgresql"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._sql: dict[int, tuple[Executable, str]] = {}  # id(statement) -> (statement, SQL)
        self._pid = os.getpid()

    def first(self, statement: Executable, params: dict[str, Any]):
        """The statement's first row (None when it has none), in one round trip."""
        if not self.postgresql:
            with self.engine.connect() as conn:
                return conn.execute(statement, params).first()
        import psycopg
        from psycopg.rows import namedtuple_row

        cached = self._sql.get(id(statement))
        if cached is None:
            cached = self._sql[id(statement)] = (statement, str(statement.compile(dialect=self.engine.dialect)))
        sql = cached[1]
        for attempt in (1, 2):
            conn = None
            try:
                conn, cur = self._connection(namedtuple_row)
                cur.execute(sql, params)
                return cur.fetchone()
            except psycopg.OperationalError as exc:
                if conn is not None:
                    self._discard(conn)
                if attempt == 2 or conn is None:
                    raise DBAPIError.instance(sql, params, exc, psycopg.Error,
                                              connection_invalidated=True) from exc
            except psycopg.Error as exc:  # the statement failed; the connection is fine
                raise DBAPIError.instance(sql, params, exc, psycopg.Error) from exc
        raise AssertionError("unreachable")

    def _connection(self, row_factory):
        """This thread's connection and its cursor (reused: one statement at a time)."""
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use
            self._local, self._open, self._pid = threading.local(), [], os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            fairy = self.engine.raw_connection()  # the engine's own connect settings
            fairy.detach()  # ours from now on, not the pool's
            conn = fairy.dbapi_connection
            conn.autocommit = True
            self._local.conn, self._local.cur = conn, conn.cursor(row_factory=row_factory)
            with self._lock:
                self._open.append(conn)
        return conn, self._local.cur

    def _discard(self, conn) -> None:
        self._local.conn = self._local.cur = None
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken; nothing more to release
            pass

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        self._local = threading.local()
        if os.getpid() != self._pid:
            return
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


_BY_DATABASE: weakref.WeakKeyDictionary[Database, HotReads] = weakref.WeakKeyDictionary()
_MAKING = threading.Lock()


def hot_reads(database: Database) -> HotReads:
    reads = _BY_DATABASE.get(database)
    if reads is None:
        with _MAKING:
            reads = _BY_DATABASE.get(database)
            if reads is None:
                reads = _BY_DATABASE[database] = HotReads(database)
                event.listen(database.engine, "engine_disposed", lambda _engine: reads.close())
                weakref.finalize(database, HotReads.close, reads)
    return reads
