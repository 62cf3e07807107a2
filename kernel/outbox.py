"""The event outbox: events derived from the audit chain, in the change's own transaction.

Every event comes from an audit entry (docs/API.md#events): `kernel/audit.py` hands the
entries it writes at commit to `write_events`, under the chain's lock, so an event exists
exactly when its audit entry does (same transaction) and event ids follow commit order (a
reader paging with `starting_after` never sees an id appear behind its cursor).

Which entries raise which events: `EVENT_OF_ACTION` in kernel/vocabulary.py (one event per
entry), plus a *deriver* per action for events one entry implies several of (the
reconciliation's entry → each claim's `claim.verified` / `claim.flagged`, billing/events.py).

What an event carries: `data.object` is the object as the API shows it, rendered when the
event is written (a snapshot, so a delivery and a retry send the same thing). The layers
below the API cannot render API shapes, so the composition root plugs in one *renderer* per
object type (`set_renderer`, api/events.py `install`); an object type without one gets the
audit entry's `after` with its `object` and `id`. The rendered object also gives the event
its subject: its `enterprise_uscc` and `provider_id` decide who may see it (finance sees all).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base, BigId, UTCDateTime
from kernel.vocabulary import EVENT_OF_ACTION, Role


class OutboxEvent(Base):
    __tablename__ = "event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    audit_seq: Mapped[int] = mapped_column(BigInteger)  # the audit entry it was derived from
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    enterprise_uscc: Mapped[str | None] = mapped_column(String(18))
    provider_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[Any] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_event_type", "type"),
        Index("ix_event_object", "object_type", "object_id"),
        Index("ix_event_enterprise_uscc", "enterprise_uscc"),
        Index("ix_event_provider_id", "provider_id"),
    )

    @property
    def public_id(self) -> str:
        return public_id(self.id)


@dataclass
class Raised:
    """An event to write: its type and object; `after` is the fallback object's fields."""

    type: str
    object_type: str
    object_id: str
    after: Any = None
    audit_seq: int = 0
    created: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# object_type → render(session, object_ids) → {object_id: the API's object}
Renderer = Callable[[Session, list[str]], dict[str, dict[str, Any]]]
# audit action → derive(session, entry) → the events the entry implies beyond its own
Deriver = Callable[[Session, dict[str, Any]], list[Raised]]

_renderers: dict[str, Renderer] = {}
_derivers: dict[str, Deriver] = {}


def set_renderer(object_type: str, render: Renderer) -> None:
    """How events about `object_type` render `data.object` (plugged in by the composition root)."""
    _renderers[object_type] = render


def set_deriver(action: str, derive: Deriver) -> None:
    """Extra events an audit entry of `action` implies (plugged in by the composition root)."""
    _derivers[action] = derive


def public_id(event_id: int) -> str:
    return f"evt_{event_id}"


def parse_public_id(value: str) -> int:
    if not value.startswith("evt_") or not value[4:].isdigit():
        raise ValueError(f"{value!r} is not an event id (evt_…)")
    return int(value[4:])


# --- writing (called by kernel/audit.py at commit, under the chain lock) -------------------

def write_events(session: Session, entries: Iterable[dict[str, Any]]) -> list[OutboxEvent]:
    """The events of the audit entries just written (each with its `seq`), fanned out to the
    webhook endpoints that want them; nothing at all when no entry raises an event."""
    raised: list[Raised] = []
    for entry in entries:
        derive = _derivers.get(entry["action"])
        if derive is not None:
            for extra in derive(session, entry):
                extra.audit_seq, extra.created = entry["seq"], entry["at"]
                raised.append(extra)
        kind = EVENT_OF_ACTION.get(entry["action"])
        if kind is not None:
            raised.append(Raised(kind, entry["object_type"], entry["object_id"], entry["after"],
                                 entry["seq"], entry["at"]))
    if not raised:
        return []
    objects = _render(session, raised)
    rows = []
    for r in raised:
        obj = objects[(r.object_type, r.object_id)]
        rows.append(OutboxEvent(type=str(r.type), created=r.created, audit_seq=r.audit_seq,
                                object_type=r.object_type, object_id=r.object_id,
                                enterprise_uscc=_str_or_none(obj.get("enterprise_uscc")),
                                provider_id=_str_or_none(obj.get("provider_id")),
                                data={"object": obj}))
    session.add_all(rows)
    session.flush()
    from kernel.webhooks import fan_out  # the webhook tables hang off this one

    fan_out(session, rows)
    return rows


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _render(session: Session, raised: list[Raised]) -> dict[tuple[str, str], dict[str, Any]]:
    wanted: dict[str, list[str]] = {}
    for r in raised:
        ids = wanted.setdefault(r.object_type, [])
        if r.object_id not in ids:
            ids.append(r.object_id)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for object_type, ids in wanted.items():
        render = _renderers.get(object_type)
        rendered = render(session, ids) if render else {}
        for object_id in ids:
            if object_id in rendered:
                out[(object_type, object_id)] = rendered[object_id]
    for r in raised:
        key = (r.object_type, r.object_id)
        if key not in out:  # no renderer (or the object is gone): what the audit entry says
            after = r.after if isinstance(r.after, dict) else {}
            out[key] = {"object": r.object_type, "id": r.object_id, **after}
    return out


# --- reading --------------------------------------------------------------------------------

def as_json(event: OutboxEvent) -> dict[str, Any]:
    """The event as the API answers it and as a webhook delivery posts it."""
    return {"id": public_id(event.id), "object": "event", "type": event.type,
            "created": event.created.isoformat(), "data": event.data}


def body_of(event: OutboxEvent) -> bytes:
    """The exact bytes a delivery posts (and signs): compact UTF-8 JSON."""
    return json.dumps(as_json(event), ensure_ascii=False, separators=(",", ":")).encode()


def visible_to(stmt, role: str, subject: str | None):
    """`stmt` over OutboxEvent narrowed to what a key of (role, subject) may see: finance
    everything, an enterprise its own claims' and statements', a provider its own."""
    if role == Role.FINANCE:
        return stmt
    if role == Role.ENTERPRISE:
        return stmt.where(OutboxEvent.enterprise_uscc == subject)
    if role == Role.PROVIDER:
        return stmt.where(OutboxEvent.provider_id == subject)
    return stmt.where(OutboxEvent.id < 0)


def may_see(event: OutboxEvent, role: str, subject: str | None) -> bool:
    """The same rule as `visible_to`, for one event in hand (the webhook fan-out)."""
    if role == Role.FINANCE:
        return True
    if role == Role.ENTERPRISE:
        return event.enterprise_uscc is not None and event.enterprise_uscc == subject
    if role == Role.PROVIDER:
        return event.provider_id is not None and event.provider_id == subject
    return False


def events_of(session: Session, object_type: str, object_ids: list[str]) -> dict[str, OutboxEvent]:
    """The latest event of each of these objects (for a deriver that raises on change only)."""
    latest: dict[str, OutboxEvent] = {}
    for start in range(0, len(object_ids), 500):
        chunk = object_ids[start:start + 500]
        rows = session.scalars(select(OutboxEvent).where(
            OutboxEvent.object_type == object_type, OutboxEvent.object_id.in_(chunk))
            .order_by(OutboxEvent.id))
        for row in rows:
            latest[row.object_id] = row
    return latest
