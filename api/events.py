"""`GET /v1/events`: the outbox, each role seeing its own (docs/API.md#events); and `install`,
which teaches the outbox to render the API's objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from api.auth import current_principal, db_session, requires
from api.errors import ApiError, not_found
from api.http import page_args, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas import billing as out
from api.schemas import redemptions as redemptions_out
from api.schemas.events import Event
from billing.events import claims_reconciled
from billing.models import Claim, Reconciliation
from billing.redemption_models import Redemption, SettlementBatch
from kernel import outbox
from kernel.outbox import OutboxEvent
from kernel.vocabulary import AuditAction, EventType

bp = Blueprint("events", __name__, url_prefix="/v1")


@doc("List events", response=ListOf(Event), tags=["events"],
     description="Oldest first. Finance sees every event, an enterprise those about its own "
                 "claims and statements, a provider those about itself.",
     query=[query("type", "Only this event type", enum=[t.value for t in EventType]), *PAGE])
@bp.get("/events")
@requires("finance", "enterprise", "provider")
def list_events():
    principal = current_principal()
    limit, after = page_args()
    stmt = outbox.visible_to(select(OutboxEvent), principal.role, principal.subject)
    kind = query_arg("type")
    if kind:
        if kind not in set(EventType):
            raise ApiError(400, "invalid_query", f"Unknown event type {kind!r}", "type")
        stmt = stmt.where(OutboxEvent.type == kind)
    if after:
        try:
            stmt = stmt.where(OutboxEvent.id > outbox.parse_public_id(after))
        except ValueError as exc:
            raise ApiError(400, "invalid_query", str(exc), "starting_after") from None
    rows = list(db_session().scalars(stmt.order_by(OutboxEvent.id).limit(limit + 1)))
    return Event.page([outbox.as_json(r) for r in rows[:limit]], len(rows) > limit, "/v1/events")


@doc("Read an event", response=Event, tags=["events"])
@bp.get("/events/<event_id>")
@requires("finance", "enterprise", "provider")
def get_event(event_id: str):
    principal = current_principal()
    try:
        eid = outbox.parse_public_id(event_id)
    except ValueError:
        raise not_found("event", event_id) from None
    row = db_session().scalars(outbox.visible_to(select(OutboxEvent), principal.role, principal.subject)
                               .where(OutboxEvent.id == eid)).first()
    if row is None:
        raise not_found("event", event_id)
    return Event.dump(outbox.as_json(row))


# --- the outbox's renderers: data.object as the API shows it ---------------------------------

def _claims(session: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    numbers = [int(i.removeprefix("clm_")) for i in ids if i.removeprefix("clm_").isdigit()]
    rendered = {}
    for start in range(0, len(numbers), 500):
        rows = session.scalars(select(Claim).where(Claim.id.in_(numbers[start:start + 500]))
                               .options(selectinload(Claim.items)))
        rendered.update({f"clm_{c.id}": out.Claim.dump(c) for c in rows})
    return rendered


def _reconciliations(session: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = (session.get(Reconciliation, i.removeprefix("rec_")) for i in ids)
    return {f"rec_{r.period}": out.Reconciliation.dump(r) for r in rows if r is not None}


def _by_id(model: type, prefix: str, schema) -> Callable[[Session, list[str]], dict[str, dict[str, Any]]]:
    """A renderer of `model` rows named `<prefix><id>`, as `schema` shows them: those the
    session holds already (the change that raised the event, usually) without a query, the
    rest 500 a query. The session's objects are what a query would answer in this
    transaction too, so the event is the same either way; it is rendered at commit under
    the chain lock (kernel/audit.py), where a round trip saved is one every writer waits for."""
    def render(session: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
        numbers = [int(i.removeprefix(prefix)) for i in ids if i.removeprefix(prefix).isdigit()]
        rendered = {}
        held = {n: session.identity_map.get(session.identity_key(model, n)) for n in numbers}
        rendered.update({f"{prefix}{n}": schema.dump(obj) for n, obj in held.items() if obj is not None})
        numbers = [n for n, obj in held.items() if obj is None]
        for start in range(0, len(numbers), 500):
            rows = session.scalars(select(model).where(model.id.in_(numbers[start:start + 500])))
            rendered.update({f"{prefix}{r.id}": schema.dump(r) for r in rows})
        return rendered
    return render


def install() -> None:
    """Plug the API's renderers and billing's claim deriver into the outbox (composition root:
    the app, the CLI and the scheduler call it before any change is made)."""
    outbox.set_renderer("claim", _claims)
    outbox.set_renderer("reconciliation", _reconciliations)
    outbox.set_renderer("redemption", _by_id(Redemption, "rdm_", redemptions_out.Redemption))
    outbox.set_renderer("settlement", _by_id(SettlementBatch, "stl_", redemptions_out.Settlement))
    outbox.set_deriver(AuditAction.RECONCILIATION_RUN, claims_reconciled)
