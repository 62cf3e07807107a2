"""Webhook endpoints and their deliveries: registration, fan-out, claiming, outcomes.

docs/API.md#webhooks is the contract. An endpoint belongs to the key's role and subject
(finance, one provider, one enterprise) and receives only the events that subject may see
(kernel/outbox.py `may_see`), of the types it subscribed to.

A delivery is one (endpoint, event) pair, created with the event (same transaction, so none
is lost) and sent by a worker outside the request path (adapters/webhooks.py):

- **claiming** — `claim_due` leases due deliveries to one worker: `FOR UPDATE SKIP LOCKED` on
  PostgreSQL, the single writer on SQLite (BEGIN IMMEDIATE), so two workers never hold the
  same delivery at once. A worker that dies (SIGKILL) leaves only a lease, which expires: the
  delivery is claimed again by the next worker. Delivery is therefore at least once.
- **outcome** — `record_outcome`: a 2xx ends the delivery (it is never sent again); any other
  answer or a network error schedules the next attempt with exponential backoff
  (`Retry.delay`), until `give_up_after` from the delivery's creation (3 days); then the
  delivery fails, and an endpoint with no successful delivery in that window is disabled.
- **manual retry** — `retry`: the delivery is due now, with a fresh window; a disabled
  endpoint is enabled again.

The secret must sign every delivery, so it is stored (not hashed) and answered only once,
at creation; it is never logged (docs/OPERATIONS.md#webhooks).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base, BigId, UTCDateTime, utcnow
from kernel.errors import Invalid
from kernel.outbox import OutboxEvent, body_of, may_see
from kernel.vocabulary import DeliveryStatus, EndpointStatus, EventType

LOOPBACK = ("127.0.0.1", "localhost", "::1")
GIVE_UP_AFTER = 3 * 24 * 3600.0  # seconds from a delivery's creation: retried for 3 days


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=EndpointStatus.ENABLED.value)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_webhook_endpoint_owner", "role", "subject"),)


class WebhookDelivery(Base):
    __tablename__ = "webhook_delivery"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                          ForeignKey("event.id"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    give_up_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    leased_by: Mapped[str | None] = mapped_column(String(128))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )


# --- configuration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Retry:
    """How deliveries are retried and sent (from Settings, by the composition root)."""

    allowed_hosts: tuple[str, ...] = LOOPBACK
    backoff_base: float = 30.0  # seconds before the 2nd attempt; doubling after each failure
    backoff_max: float = 6 * 3600.0
    give_up_after: float = GIVE_UP_AFTER  # manual retries and the disabling window
    timeout: float = 10.0  # one POST
    lease: float = 120.0  # a claimed delivery is another worker's again after this

    def delay(self, attempts: int) -> timedelta:
        """Wait after the `attempts`-th failed attempt: 30 s, 1 min, 2 min, … capped at 6 h."""
        return timedelta(seconds=min(self.backoff_base * 2 ** max(attempts - 1, 0), self.backoff_max))


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether `url`'s host is on the allow-list: exact names (case-insensitive), `*.suffix`
    for any subdomain of suffix, `*` for any host."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if not host:
        return False
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def check_url(url: str, allowed: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("invalid_url", "url must be an absolute http:// or https:// URL", "url")
    if parts.username or parts.password:
        raise Invalid("invalid_url", "url must not carry credentials", "url")
    if not host_allowed(url, allowed):
        raise Invalid("url_not_allowed", f"Host {parts.hostname!r} is not in "
                      "VOUCHER_WEBHOOK_ALLOWED_HOSTS", "url")


# --- endpoints ----------------------------------------------------------------------------------

def create_endpoint(session: Session, role: str, subject: str | None, url: str, events: list[str],
                    allowed_hosts: tuple[str, ...]) -> WebhookEndpoint:
    """A new endpoint of (role, subject); its `secret` is readable on the returned row only
    until the caller answers with it (the API shows it once)."""
    check_url(url, allowed_hosts)
    known = set(EventType)
    if not events:
        raise Invalid("missing_field", "events must name at least one event type", "events")
    for n, name in enumerate(events):
        if name != "*" and name not in known:
            raise Invalid("unknown_event_type", f"Unknown event type {name!r}", f"events[{n}]")
    endpoint = WebhookEndpoint(url=url, events=sorted(set(events)), role=role, subject=subject,
                               secret=f"whsec_{secrets.token_hex(32)}",
                               status=EndpointStatus.ENABLED, created_at=utcnow())
    session.add(endpoint)
    session.flush()
    return endpoint


def endpoints_of(session: Session, role: str, subject: str | None):
    """The select of (role, subject)'s endpoints."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.role == role)
    return stmt.where(WebhookEndpoint.subject == subject) if subject is not None \
        else stmt.where(WebhookEndpoint.subject.is_(None))


def endpoint_of(session: Session, endpoint_id: int, role: str, subject: str | None) -> WebhookEndpoint | None:
    return session.scalars(endpoints_of(session, role, subject)
                           .where(WebhookEndpoint.id == endpoint_id)).first()


def wants(endpoint: WebhookEndpoint, event: OutboxEvent) -> bool:
    return ("*" in endpoint.events or event.type in endpoint.events) \
        and may_see(event, endpoint.role, endpoint.subject)


# --- deliveries ---------------------------------------------------------------------------------

def fan_out(session: Session, events: list[OutboxEvent]) -> None:
    """A delivery for each (enabled endpoint, event) it wants; called as the events are written."""
    endpoints = list(session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.status == EndpointStatus.ENABLED)))
    if not endpoints:
        return
    give_up = timedelta(seconds=GIVE_UP_AFTER)
    now = utcnow()
    rows = [{"endpoint_id": ep.id, "event_id": ev.id, "status": DeliveryStatus.PENDING.value,
             "attempts": 0, "created_at": now, "next_attempt_at": now, "give_up_at": now + give_up}
            for ev in events for ep in endpoints if wants(ep, ev)]
    if rows:
        session.execute(WebhookDelivery.__table__.insert(), rows)


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to one worker, with what it needs to send it."""

    id: int
    url: str
    secret: str
    body: bytes


def claim_due(session: Session, worker: str, retry: Retry, limit: int = 10,
              now: datetime | None = None) -> list[Claimed]:
    """Lease up to `limit` due deliveries to `worker` (commits). A delivery is due when it is
    pending, its next attempt has come, its endpoint is enabled and no live lease holds it."""
    now = now or utcnow()
    d, e = WebhookDelivery, WebhookEndpoint
    with session.begin():
        rows = session.execute(
            select(d, e.url, e.secret).join(e, e.id == d.endpoint_id)
            .where(d.status == DeliveryStatus.PENDING, d.next_attempt_at <= now,
                   or_(d.lease_until.is_(None), d.lease_until < now), e.status == EndpointStatus.ENABLED)
            .order_by(d.next_attempt_at, d.id).limit(limit)
            .with_for_update(of=d, skip_locked=True)).all()
        claimed = []
        events = {ev.id: ev for ev in session.scalars(
            select(OutboxEvent).where(OutboxEvent.id.in_([r[0].event_id for r in rows])))} if rows else {}
        for delivery, url, secret in rows:
            delivery.lease_until = now + timedelta(seconds=retry.lease)
            delivery.leased_by = worker
            claimed.append(Claimed(delivery.id, url, secret, body_of(events[delivery.event_id])))
    return claimed


def record_outcome(session: Session, delivery_id: int, worker: str, retry: Retry,
                   status_code: int | None, error: str | None, now: datetime | None = None) -> str:
    """Record one attempt's outcome (commits); returns the delivery's status after it.

    A 2xx is recorded whoever holds the lease (the receiver has it: it must never get it
    again); a failure only by the worker that still holds the lease (another may have taken
    the delivery over after the lease expired, and its outcome is the one that counts).
    """
    now = now or utcnow()
    ok = status_code is not None and 200 <= status_code < 300
    with session.begin():
        delivery = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                                   .with_for_update()).first()
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return delivery.status if delivery else "gone"
        if not ok and delivery.leased_by != worker:
            return delivery.status
        delivery.attempts += 1
        delivery.last_attempt_at, delivery.last_status_code = now, status_code
        delivery.last_error = (error or (None if ok else f"HTTP {status_code}"))
        if delivery.last_error:
            delivery.last_error = delivery.last_error[:500]
        delivery.lease_until, delivery.leased_by = None, None
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if ok:
            delivery.status, delivery.delivered_at = DeliveryStatus.SUCCEEDED, now
            endpoint.last_success_at = now
        elif now >= delivery.give_up_at or error == HOST_NOT_ALLOWED:
            delivery.status = DeliveryStatus.FAILED
            window = timedelta(seconds=retry.give_up_after)
            if endpoint.status == EndpointStatus.ENABLED and error != HOST_NOT_ALLOWED and (
                    endpoint.last_success_at is None or endpoint.last_success_at < now - window):
                endpoint.status, endpoint.disabled_at = EndpointStatus.DISABLED, now
                endpoint.disabled_reason = (f"no successful delivery in {window}; last: "
                                            f"{delivery.last_error}")[:255]
        else:
            delivery.next_attempt_at = now + retry.delay(delivery.attempts)
        return delivery.status


HOST_NOT_ALLOWED = "host not allowed (VOUCHER_WEBHOOK_ALLOWED_HOSTS)"


def retry(session: Session, delivery: WebhookDelivery, endpoint: WebhookEndpoint, settings: Retry,
          now: datetime | None = None) -> WebhookDelivery:
    """A manual retry: the delivery is due now, with a fresh window; its endpoint is enabled."""
    now = now or utcnow()
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = now
    delivery.give_up_at = now + timedelta(seconds=settings.give_up_after)
    delivery.lease_until, delivery.leased_by = None, None
    if endpoint.status != EndpointStatus.ENABLED:
        endpoint.status, endpoint.disabled_at, endpoint.disabled_reason = EndpointStatus.ENABLED, None, None
    return delivery


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(WebhookDelivery)
                          .where(WebhookDelivery.status == DeliveryStatus.PENDING)) or 0
