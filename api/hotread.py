"""Single-statement reads for hot request paths: one round trip, nothing else.

A pooled SQLAlchemy checkout costs a round trip of its own before the query (the pool's
pre-ping), and a transaction adds BEGIN and ROLLBACK; for a read that is one statement
those are two to four round trips around one. On PostgreSQL a hot read here runs on one
long-lived autocommit connection per thread instead, as a server-side prepared statement
executed through libpq itself (psycopg's `pq` layer: `PQexecPrepared`), which skips
psycopg's per-query Python machinery — the largest cost left on the quota path when
profiled (docs/BENCHMARKS.md). Robustness is what the pre-ping gave: a read that fails
because the connection broke (a database restart, an idle timeout) reconnects, prepares
again and runs once more; if the database is down, the error is SQLAlchemy's
OperationalError, which the app answers with 503 like any other.

Rows are named tuples of text-format values: integers (int2/4/8) as int, everything else as
str, NULL as None — so keep hot reads to such columns (timestamps only tested for NULL).
On SQLite, where there is no network round trip, reads go through the engine as usual.

The connections belong to the Database: closed when its engine is disposed, or when the
Database is garbage collected; a process forked after a read makes its own.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import namedtuple
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Executable,
    Select,
    and_,
    bindparam,
    case,
    cast,
    event,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.exc import DBAPIError

from billing.ledger import Balance
from billing.models import QuotaBalance
from billing.policy import Policy
from billing.redemption_models import Redemption
from kernel.billing_periods import BillingPeriod
from kernel.db import Database
from kernel.vocabulary import CapBasis, EndpointStatus
from metering.models import Enterprise, ModelFiling


class HotReads:
    def __init__(self, database: Database) -> None:
        self.engine = database.engine  # not the Database: it may be collected, closing these
        self.postgresql = database.dialect == "postgresql"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._plans: dict[int, _Plan] = {}  # id(statement) -> its prepared form
        self._pid = os.getpid()

    def first(self, statement: Executable, params: dict[str, Any]):
        """The statement's first row (None when it has none), in one round trip."""
        if not self.postgresql:
            with self.engine.connect() as conn:
                return conn.execute(statement, params).first()
        import psycopg

        plan = self._plans.get(id(statement))
        if plan is None:
            plan = self._plans[id(statement)] = _Plan.of(statement, self.engine.dialect,
                                                         len(self._plans))
        values = [_text(params[n]) for n in plan.names]
        for attempt in (1, 2):
            conn = None
            try:
                conn, prepared = self._connection()
                pgconn = conn.pgconn
                if plan.name not in prepared:
                    _check(pgconn, pgconn.prepare(plan.name, plan.sql), plan.text, params)
                    prepared.add(plan.name)
                res = _check(pgconn, pgconn.exec_prepared(plan.name, values), plan.text, params)
                return plan.row(res) if res.ntuples else None
            except psycopg.OperationalError as exc:
                if conn is not None:
                    self._discard(conn)
                if attempt == 2 or conn is None:
                    raise DBAPIError.instance(plan.text, params, exc, psycopg.Error,
                                              connection_invalidated=True) from exc
        raise AssertionError("unreachable")

    def _connection(self):
        """This thread's connection and the names prepared on it (one statement at a time)."""
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use
            self._local, self._open, self._pid = threading.local(), [], os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            fairy = self.engine.raw_connection()  # the engine's own connect settings
            fairy.detach()  # ours from now on, not the pool's
            conn = fairy.dbapi_connection
            conn.autocommit = True
            self._local.conn, self._local.prepared = conn, set()
            with self._lock:
                self._open.append(conn)
        return conn, self._local.prepared

    def _discard(self, conn) -> None:
        self._local.conn = self._local.prepared = None
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


def _text(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text format (a list of integers as an array literal)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, (list, tuple)):
        return ("{" + ",".join(str(v) for v in value) + "}").encode()
    if isinstance(value, datetime):
        return value.isoformat().encode()
    return str(value).encode()


_INTEGER_OIDS = {20, 21, 23}  # int8, int2, int4: answered as int, every other type as str


@dataclass(frozen=True)
class _Plan:
    """A statement compiled once for libpq: $n placeholders, the parameter names in order,
    and the row type its results are read into."""

    statement: Executable  # kept alive: plans are found by id(statement)
    name: bytes
    sql: bytes
    text: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, statement: Executable, dialect, n: int) -> _Plan:
        text = str(statement.compile(dialect=dialect))
        names: list[str] = []

        def number(m: re.Match) -> str:
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        sql = re.sub(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s", number, text)
        return cls(statement, f"voucher_hot_{n}".encode(), sql.encode(), text, tuple(names))

    def row(self, res):
        fields = range(res.nfields)
        cls = _row_class(tuple(res.fname(i).decode() for i in fields))
        ints = [res.ftype(i) in _INTEGER_OIDS for i in fields]
        values = []
        for i in fields:
            v = res.get_value(0, i)
            values.append(None if v is None else int(v) if ints[i] else v.decode())
        return cls(*values)


_ROW_CLASSES: dict[tuple[str, ...], type] = {}


def _row_class(names: tuple[str, ...]) -> type:
    cls = _ROW_CLASSES.get(names)
    if cls is None:
        cls = _ROW_CLASSES[names] = namedtuple("HotRow", names)  # type: ignore[misc]
    return cls


def _check(pgconn, res, text: str, params: dict[str, Any]):
    """The result when it succeeded; a broken connection raises psycopg.OperationalError
    (the caller reconnects once), a failed statement SQLAlchemy's DBAPIError."""
    import psycopg
    from psycopg import pq

    if res.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return res
    message = (res.error_message or pgconn.error_message or b"").decode(errors="replace")
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(message or "connection lost")
    exc = psycopg.DatabaseError(message)
    raise DBAPIError.instance(text, params, exc, psycopg.Error) from exc


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


# --- the quota read ---------------------------------------------------------------------------
# `GET /v1/enterprises/{uscc}/quota` for every enterprise, with or without a balance row for the
# year, in one statement (docs/API.md#quota, docs/ARCHITECTURE.md#rule-homes): the key's
# columns, the cap computed from the model filings with the policy's values passed as bind
# parameters (so one prepared statement serves every policy), the balance row's reserved and
# granted (0 without one) and whether the enterprise is registered. It answers what
# billing.ledger.read_quota defines; tests/billing/test_rule_homes.py holds them together.

def _int(name: str):
    return cast(bindparam(name), BigInteger)  # typed: PostgreSQL infers nothing from a bare $n


def quota_with_key(key_select: Select) -> Select:
    """kernel.keys.key_select() joined to the quota of (`uscc`, `year`); bind the parameters
    of quota_params(). Columns after the key's: cap, cap_basis, reserved, granted, policy_id,
    and `enterprise` (NULL when the USCC is not registered)."""
    q, e, f = QuotaBalance.__table__, Enterprise.__table__, ModelFiling.__table__
    uscc, year = bindparam("uscc"), _int("year")
    filed = (select(literal_column("1")).select_from(f)
             .where(f.c.enterprise_uscc == uscc,
                    f.c.obtained_on >= bindparam("filed_from", type_=Date),
                    f.c.obtained_on <= bindparam("filed_until", type_=Date))
             .exists())
    outside = or_(year < _int("first_year"), year > _int("last_year"))
    cap = case((outside, literal_column("0", BigInteger)), (filed, _int("cap_new_model_filing")),
               else_=_int("cap_standard"))
    basis = case((outside, literal_column(f"'{CapBasis.OUTSIDE_POLICY_WINDOW}'")),
                 (filed, literal_column(f"'{CapBasis.NEW_MODEL_FILING}'")),
                 else_=literal_column(f"'{CapBasis.STANDARD}'"))
    (keys,) = key_select.get_final_froms()
    return (key_select
            .add_columns(cap.label("cap"), basis.label("cap_basis"),
                         func.coalesce(q.c.reserved, literal_column("0", BigInteger)).label("reserved"),
                         func.coalesce(q.c.granted, literal_column("0", BigInteger)).label("granted"),
                         func.coalesce(q.c.policy_id, bindparam("policy_id")).label("policy_id"),
                         e.c.uscc.label("enterprise"))
            .select_from(keys.outerjoin(q, and_(q.c.enterprise_uscc == uscc, q.c.year == year,
                                                q.c.programme_id == bindparam("programme")))
                         .outerjoin(e, e.c.uscc == uscc)))


def quota_params(policy: Policy, uscc: str, year: int) -> dict[str, Any]:
    """The bind parameters of quota_with_key() for one enterprise-year under `policy` (its
    programme's balance row: docs/POLICY.md#programmes):
    a filing raises the cap of `year` when obtained in one of the `new_filing_years` years
    ending with it (billing.policy.cap_for); a year with no day in the window has cap 0."""
    return {
        "uscc": uscc, "year": year, "policy_id": policy.id, "programme": policy.programme,
        "cap_standard": policy.cap_standard, "cap_new_model_filing": policy.cap_new_model_filing,
        "first_year": policy.effective_from.year, "last_year": policy.effective_until.year,
        "filed_from": date(year - policy.new_filing_years + 1, 1, 1),
        "filed_until": date(year, 12, 31),
    }


def balance_of_row(row, uscc: str, year: int) -> Balance:
    """The quota in a quota_with_key() row (check `row.enterprise` first)."""
    return Balance(uscc, year, row.cap, row.cap_basis, row.reserved, row.granted, row.policy_id)


# --- the authorisation's read (docs/ARCHITECTURE.md#hold-fast-path) ------------------------------
# `POST /v1/redemptions` in its plain case reads, in one statement: the key, the quota of the
# period's year as quota_with_key() reads it (with the balance row's own cap, NULL without a row),
# whether the enterprise is eligible, the period's state, whether the provider used the reference,
# the new redemption's id, and the enabled webhook endpoints (for kernel.webhooks.wants).

def hold_with_key(key_select: Select) -> Select:
    """quota_with_key() plus what billing.redemptions.plan_hold needs; bind quota_params() of the
    period's year and `period`, `reference`."""
    q, e, bp, r = (QuotaBalance.__table__, Enterprise.__table__, BillingPeriod.__table__,
                   Redemption.__table__)
    (keys,) = key_select.get_final_froms()
    taken = (select(literal_column("1")).select_from(r)
             .where(r.c.provider_id == keys.c.subject, r.c.reference == bindparam("reference")).exists())
    state = select(bp.c.state).where(bp.c.period == bindparam("period")).scalar_subquery()
    endpoints = literal_column(
        "(SELECT json_agg(json_build_object('id', w.id, 'events', w.events, 'role', w.role, "
        f"'subject', w.subject)) FROM webhook_endpoint AS w WHERE w.status = '{EndpointStatus.ENABLED}')")
    return quota_with_key(key_select).add_columns(
        q.c.cap.label("row_cap"), e.c.eligible.label("eligible"), state.label("period_state"),
        taken.label("taken"), literal_column("nextval('redemption_id_seq')", BigInteger).label("rid"),
        endpoints.label("endpoints"))


def hold_call() -> Select:
    """SELECT voucher_hold(...) (migration 0019), its arguments bound by name: the names of
    billing.redemptions.hold_arguments()."""
    return select(func.voucher_hold(*(bindparam(name) for name in HOLD_ARGUMENTS)).label("event_id"))


# migration 0019's parameters, in order
HOLD_ARGUMENTS = (
    "p_id", "p_provider", "p_reference", "p_uscc", "p_period", "p_year", "p_programme", "p_list",
    "p_requested", "p_subsidy", "p_policy", "p_created", "p_expires", "p_reserved", "p_granted", "p_row_cap",
    "p_cap", "p_basis", "p_open_kind", "p_open_amount", "p_open_reason", "p_open_entry",
    "p_entry", "p_reason", "p_actor_key", "p_actor_role", "p_request_id", "p_action", "p_object_id",
    "p_after", "p_blob_head", "p_blob_tail", "p_event_type", "p_event_data", "p_endpoints", "p_give_up",
)
