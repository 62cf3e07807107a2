"""Events, webhook endpoints and their deliveries (docs/API.md#events, #webhooks)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.base import Resource, Timestamp, omitted_when_none, public_id
from kernel.vocabulary import DeliveryStatus, EndpointStatus, EventType

EventId = public_id("evt_")
EndpointId = public_id("we_")
DeliveryId = public_id("whd_")
EventName = Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]


class EventData(BaseModel):
    object: dict[str, Any] = Field(description="The object as the API shows it, when the event "
                                   "was raised (a claim, a reconciliation, a statement)")


class Event(Resource):
    """A state change of interest, derived from the audit entry written with it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "evt_41", "object": "event", "type": "claim.approved", "created": "2026-11-03T02:00:00+00:00",
        "data": {"object": {"object": "claim", "id": "clm_12", "status": "approved", "payable": 600000}}}]})
    id: EventId = Field(description="evt_…, the `starting_after` cursor")
    object: Literal["event"] = "event"
    type: EventName
    created: Timestamp
    data: EventData


class WebhookEndpoint(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "webhook_endpoint", "id": "we_3", "url": "https://erp.example.com/voucher-hooks",
        "events": ["claim.approved", "claim.rejected"], "status": "enabled", "disabled_reason": None,
        "created_at": "2026-10-01T02:00:00+00:00", "disabled_at": None,
        "secret": "whsec_…(shown once)"}]})
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: EndpointId
    url: str
    events: list[str] = Field(description="Event types it receives; `*` for every type")
    status: EndpointStatus = Field(description="disabled after 3 days without a successful delivery")
    disabled_reason: str | None
    created_at: Timestamp
    disabled_at: Timestamp | None
    # Read from `shown_secret`, which only the creation's answer passes: a row's `secret`
    # is never read, so no other answer can carry it.
    secret: str | None = omitted_when_none(validation_alias="shown_secret",
                                           description="Signs the deliveries; only in the answer "
                                           "to the endpoint's creation, never shown again")


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "url": "http://127.0.0.1:9000/hooks", "events": ["claim.approved", "claim.rejected"]}]})
    url: str = Field(max_length=2048, description="http(s) URL on a host of "
                     "VOUCHER_WEBHOOK_ALLOWED_HOSTS")
    events: list[str] = Field(min_length=1, max_length=32,
                              description="Event types (docs/API.md#event-types), or `*`")


class WebhookDelivery(Resource):
    """One event's delivery to one endpoint: its attempts so far and the latest outcome."""

    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: DeliveryId
    endpoint_id: EndpointId
    event_id: EventId
    status: DeliveryStatus = Field(description="pending (until a 2xx or 3 days), succeeded, failed")
    attempts: int
    created_at: Timestamp
    next_attempt_at: Timestamp | None = Field(description="When it is tried next (pending only)")
    last_attempt_at: Timestamp | None
    last_status_code: int | None = Field(description="HTTP status of the latest attempt; null when "
                                         "nothing answered")
    last_error: str | None
    delivered_at: Timestamp | None
