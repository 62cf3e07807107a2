"""The audit trail: every state change, appended to a hash chain in the change's own transaction.

`append(session, action, object_type, object_id, before=, after=)` records what changed; the
entry is written when the session commits, so it lands in the same transaction as the change
or not at all. Entries form a chain: each carries the hash of the one before, and its own hash
covers every field, so an edited, deleted or reordered entry breaks `verify_chain`.

Who acted comes from the request (the HTTP edge's `api.auth.request_actor`: the principal and
the request id, plugged in by `set_request_actor_source`) or, outside a request, from
`acting_as("cli")` / `acting_as("scheduler")`; with neither the actor is `system`.

Events (kernel/outbox.py) are derived from the entries as they are written, in the same
transaction and under the same lock (docs/API.md#events).

Serialising appends: the chain has one head, so two writers must not both extend it. Entries
are written at commit time, after the transaction's own changes are flushed, under a
transaction-scoped advisory lock on PostgreSQL (SQLite already runs one writer at a time).
Taking that lock last means a transaction holding it never waits for another lock, so it can
be part of no deadlock, and `seq` follows commit order (`at` is when `append` was called, so
two concurrent transactions' entries may show times out of seq order by a few milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, event, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel import outbox
from kernel.db import Base, BigId, UTCDateTime, parse_row_id, utcnow

GENESIS = "0" * 64
# pg_advisory_xact_lock key for the chain head: any constant the app uses for nothing else.
CHAIN_LOCK = 0x766F7563_61756474  # "voucaudt"
_PENDING = "voucher.audit.pending"
_HOOKED = "voucher.audit.hooked"


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_key_id: Mapped[str | None] = mapped_column(String(32))
    actor_role: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    before: Mapped[Any | None] = mapped_column(JSON)
    after: Mapped[Any | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_event_object", "object_type", "object_id"),
        Index("ix_audit_event_action", "action"),
    )


# --- who is acting ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    role: str
    key_id: str | None = None
    request_id: str | None = None


_actor: ContextVar[Actor | None] = ContextVar("voucher_audit_actor", default=None)


# The actor of the request being handled (None outside a request); set by the HTTP edge.
_request_actor_source: Callable[[], Actor | None] | None = None


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}_{uuid.uuid4().hex}"



def set_request_actor_source(source: Callable[[], Actor | None]) -> None:
    """Where changes made inside a request find who acted (the app factory plugs in the
    HTTP edge's `api.auth.request_actor`)."""
    global _request_actor_source
    _request_actor_source = source


@contextmanager
def acting_as(role: str, key_id: str | None = None) -> Iterator[Actor]:
    """Attribute changes made outside a request (CLI, scheduler) to this actor."""
    actor = Actor(role=role, key_id=key_id, request_id=new_request_id(role))
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


def current_actor() -> Actor:
    if _request_actor_source is not None:
        actor = _request_actor_source()
        if actor is not None:
            return actor
    actor = _actor.get()
    if actor is not None:
        return actor
    return Actor("system", None, new_request_id("sys"))


# --- writing ----------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """Plain JSON values (what the database gives back), so a stored entry hashes as written."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        raise TypeError("floats have no place in the audit trail; use int fen or Decimal")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


def diff(changes: dict[str, tuple[Any, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """{field: (before, after)} (as `metering.registry.apply_changes` returns) → (before, after)."""
    return ({k: jsonable(b) for k, (b, _) in changes.items()},
            {k: jsonable(a) for k, (_, a) in changes.items()})


def entry_fields(actor: Actor, action: str, object_type: str, object_id: str | int, before: Any = None,
                 after: Any = None, at: datetime | None = None) -> dict[str, Any]:
    """An entry's fields before it has its place in the chain (seq, prev_hash, hash)."""
    return {
        "at": at or utcnow(),
        "actor_key_id": actor.key_id,
        "actor_role": actor.role,
        "request_id": actor.request_id or new_request_id(),
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id),
        "before": jsonable(before),
        "after": jsonable(after),
    }


def append(session: Session, action: str, object_type: str, object_id: str | int,
           before: Any = None, after: Any = None) -> None:
    """Record a change; it is written when `session` commits, in that same transaction."""
    entry = entry_fields(current_actor(), action, object_type, object_id, before, after)
    session.info.setdefault(_PENDING, []).append(entry)
    if not session.info.get(_HOOKED):
        event.listen(session, "before_commit", _write_pending)
        event.listen(session, "after_transaction_end", _forget_pending)
        session.info[_HOOKED] = True


def _canonical(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "at": fields["at"].isoformat(timespec="microseconds"),
        "actor_key_id": fields["actor_key_id"],
        "actor_role": fields["actor_role"],
        "action": fields["action"],
        "object_type": fields["object_type"],
        "object_id": fields["object_id"],
        "before": fields["before"],
        "after": fields["after"],
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of an entry's fields, prev_hash included."""
    blob = _dumps({**_canonical(fields), "seq": int(fields["seq"]), "request_id": fields["request_id"],
                   "prev_hash": fields["prev_hash"]})
    return hashlib.sha256(blob.encode()).hexdigest()


def chain_blob(fields: dict[str, Any]) -> tuple[str, str]:
    """entry_hash's canonical JSON of an entry not yet in the chain, as the text before its
    prev_hash and the text between prev_hash and seq: blob = head + prev_hash + tail + seq + "}".
    For a writer that learns its place in the chain inside the database (migration 0019's
    voucher_hold). The three keys sort last ("prev_hash" < "request_id" < "seq", after every
    other key), so the rest renders exactly as entry_hash renders it."""
    head = _dumps(_canonical(fields))[:-1] + ',"prev_hash":"'
    tail = '","request_id":' + _dumps(fields["request_id"]) + ',"seq":'
    return head, tail


def _lock_head(session: Session) -> tuple[int, str]:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK})
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    return (head.seq, head.hash) if head else (0, GENESIS)


def _write_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: the outer commit writes
    entries = session.info.get(_PENDING)
    if not entries:
        return
    session.flush()  # the change's own row locks first; the chain lock is always taken last
    seq, prev = _lock_head(session)
    written = []
    for entry in entries:
        seq += 1
        fields = {**entry, "seq": seq, "prev_hash": prev}
        fields["hash"] = prev = entry_hash(fields)
        session.add(AuditEvent(**fields))
        written.append(fields)
    entries.clear()
    # The events these entries raise, in this transaction and under the same lock, so the
    # events and the chain agree (docs/API.md#events).
    outbox.write_events(session, written)


def _forget_pending(session: Session, transaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


# --- reading and verifying --------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    seq: int
    kind: str  # edited | missing | broken_link | out_of_order
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass
class ChainReport:
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[Problem] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


_COLUMNS = ("id", "seq", "at", "actor_key_id", "actor_role", "request_id", "action", "object_type",
            "object_id", "before", "after", "prev_hash", "hash")


def verify_chain(session: Session, batch: int = 1000) -> ChainReport:
    """Walk the chain in seq order and recompute every hash.

    An edited entry no longer matches its hash; a deleted one leaves a seq gap and a
    prev_hash that names no neighbour; reordered entries (seq or ids swapped) break both.
    Deleting entries from the end leaves a shorter valid chain: compare the head with one
    recorded earlier (`verify_anchor`) to catch that.
    """
    report = ChainReport(problems=[])
    problems = report.problems
    expected_seq, prev_hash, last_id = 1, GENESIS, None
    after_seq = 0
    while True:
        # Plain rows, not entities: the caller's session keeps nothing of a long walk.
        rows = session.execute(
            select(*(getattr(AuditEvent, c) for c in _COLUMNS))
            .where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            break
        for row in rows:
            report.entries += 1
            if row.seq != expected_seq:
                problems.append(Problem(row.seq, "missing",
                                        f"expected seq {expected_seq}: entries {expected_seq}..{row.seq - 1} are gone"))
            if row.prev_hash != prev_hash:
                problems.append(Problem(row.seq, "broken_link",
                                        "prev_hash does not match the hash of the entry before it"))
            if entry_hash(row._asdict()) != row.hash:
                problems.append(Problem(row.seq, "edited", "the entry no longer matches its hash"))
            if last_id is not None and row.id < last_id:
                problems.append(Problem(row.seq, "out_of_order",
                                        "written before the entry that precedes it in the chain"))
            expected_seq, prev_hash, last_id = row.seq + 1, row.hash, row.id
            report.head_seq, report.head_hash = row.seq, row.hash
        after_seq = rows[-1].seq
    return report


def verify_anchor(session: Session, seq: int, hash_: str) -> Problem | None:
    """An anchor (seq, hash) recorded earlier must still be in the chain, unchanged."""
    row = session.scalar(select(AuditEvent).where(AuditEvent.seq == seq))
    if row is None:
        return Problem(seq, "missing", "the anchored entry is gone (the chain was cut back)")
    if row.hash != hash_:
        return Problem(seq, "edited", f"the anchored entry's hash is {row.hash}, not {hash_}")
    return None


def public_id(seq: int) -> str:
    return f"aud_{seq}"


def parse_public_id(value: str) -> int:
    return parse_row_id("aud_", value, "audit event")
