"""Webhook endpoints and their deliveries (docs/API.md#webhooks): any role, its own only."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import select

from api.auth import current_principal, db_session, requires
from api.errors import not_found
from api.http import json_body, page_args, parse_model
from api.openapi import PAGE, ListOf, doc
from api.schemas.events import WebhookDelivery, WebhookEndpoint, WebhookEndpointIn
from kernel import webhooks
from kernel.vocabulary import DeliveryStatus

bp = Blueprint("webhooks", __name__, url_prefix="/v1")
ALL = ("finance", "enterprise", "provider")


def _retry() -> webhooks.Retry:
    return current_app.extensions["voucher.webhooks"]


def _number(value: str, prefix: str, what: str) -> int:
    if not value.startswith(prefix) or not value[len(prefix):].isdigit():
        raise not_found(what, value)
    return int(value[len(prefix):])


def _endpoint_or_404(session, endpoint_id: str) -> webhooks.WebhookEndpoint:
    principal = current_principal()
    row = webhooks.endpoint_of(session, _number(endpoint_id, "we_", "webhook endpoint"),
                               principal.role, principal.subject)
    if row is None:  # another subject's endpoint answers 404 too
        raise not_found("webhook endpoint", endpoint_id)
    return row


def _delivery(row: webhooks.WebhookDelivery) -> dict:
    pending = row.status == DeliveryStatus.PENDING
    return WebhookDelivery.dump(row, next_attempt_at=row.next_attempt_at if pending else None)


@doc("Register a webhook endpoint", request=WebhookEndpointIn, response=WebhookEndpoint, status=201,
     description="It receives the events its key's subject may see, of the types listed, signed "
                 "with `secret` (answered here only, never again). Its host must be in "
                 "VOUCHER_WEBHOOK_ALLOWED_HOSTS.", tags=["webhooks"])
@bp.post("/webhook-endpoints")
@requires(*ALL)
def create_endpoint():
    principal = current_principal()
    body = parse_model(WebhookEndpointIn, json_body())
    session = db_session()
    with session.begin():
        row = webhooks.create_endpoint(session, principal.role, principal.subject, body.url, body.events,
                                       _retry().allowed_hosts)
    return WebhookEndpoint.dump(row, shown_secret=row.secret), 201


@doc("List your webhook endpoints", response=ListOf(WebhookEndpoint), tags=["webhooks"], query=PAGE)
@bp.get("/webhook-endpoints")
@requires(*ALL)
def list_endpoints():
    principal = current_principal()
    limit, after = page_args()
    stmt = webhooks.endpoints_of(db_session(), principal.role, principal.subject)
    if after:
        stmt = stmt.where(webhooks.WebhookEndpoint.id > _number(after, "we_", "webhook endpoint"))
    rows = list(db_session().scalars(stmt.order_by(webhooks.WebhookEndpoint.id).limit(limit + 1)))
    return WebhookEndpoint.page(rows[:limit], len(rows) > limit, "/v1/webhook-endpoints")


@doc("Read a webhook endpoint", response=WebhookEndpoint, tags=["webhooks"])
@bp.get("/webhook-endpoints/<endpoint_id>")
@requires(*ALL)
def get_endpoint(endpoint_id: str):
    return WebhookEndpoint.dump(_endpoint_or_404(db_session(), endpoint_id))


@doc("Delete a webhook endpoint and its deliveries", response=WebhookEndpoint, tags=["webhooks"])
@bp.delete("/webhook-endpoints/<endpoint_id>")
@requires(*ALL)
def delete_endpoint(endpoint_id: str):
    session = db_session()
    with session.begin():
        row = _endpoint_or_404(session, endpoint_id)
        answer = WebhookEndpoint.dump(row)
        session.execute(webhooks.WebhookDelivery.__table__.delete()
                        .where(webhooks.WebhookDelivery.endpoint_id == row.id))
        session.delete(row)
    return answer


@doc("An endpoint's deliveries, newest first: attempts, last status code and error",
     response=ListOf(WebhookDelivery), tags=["webhooks"], query=PAGE)
@bp.get("/webhook-endpoints/<endpoint_id>/deliveries")
@requires(*ALL)
def list_deliveries(endpoint_id: str):
    session = db_session()
    endpoint = _endpoint_or_404(session, endpoint_id)
    limit, after = page_args()
    d = webhooks.WebhookDelivery
    stmt = select(d).where(d.endpoint_id == endpoint.id)
    if after:
        stmt = stmt.where(d.id < _number(after, "whd_", "webhook delivery"))
    rows = list(session.scalars(stmt.order_by(d.id.desc()).limit(limit + 1)))
    return WebhookDelivery.page([_delivery(r) for r in rows[:limit]], len(rows) > limit,
                                f"/v1/webhook-endpoints/{endpoint_id}/deliveries")


@doc("Retry a delivery now", response=WebhookDelivery, tags=["webhooks"],
     description="Due at once, retried again for up to 3 days; a disabled endpoint is enabled "
                 "again. Retrying a delivery that succeeded sends it once more.")
@bp.post("/webhook-endpoints/<endpoint_id>/deliveries/<delivery_id>/retry")
@requires(*ALL)
def retry_delivery(endpoint_id: str, delivery_id: str):
    session = db_session()
    with session.begin():
        endpoint = _endpoint_or_404(session, endpoint_id)
        d = webhooks.WebhookDelivery
        row = session.scalars(select(d).where(d.id == _number(delivery_id, "whd_", "webhook delivery"),
                                              d.endpoint_id == endpoint.id).with_for_update()).first()
        if row is None:
            raise not_found("webhook delivery", delivery_id)
        webhooks.retry(session, row, endpoint, _retry())
    return _delivery(row)
