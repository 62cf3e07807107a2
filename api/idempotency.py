"""`Idempotency-Key` on POST (Stripe's convention).

The first request with a key claims it (a unique row) before the view runs; its answer is
stored afterwards. The same key with the same body replays that answer; with a different
body it is refused; while the first is still running, a second gets 409. A 5xx answer
frees the key so the client can retry. Keys are scoped to the API key and kept
VOUCHER_IDEMPOTENCY_TTL_HOURS (24): the `idempotency-expiry` job deletes older ones
(`expire_answers`), and a key older than that is free for a new request at once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from flask import Flask, Response, current_app, g, request
from sqlalchemy import String, Text, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from api.errors import ApiError
from kernel.db import Base, BigId, UTCDateTime, utcnow

HEADER = "Idempotency-Key"
TTL = timedelta(hours=24)  # default of settings.idempotency_ttl_hours


class IdempotencyKey(Base):
    __tablename__ = "idempotency_key"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12))  # processing | done
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("api_key_id", "key"),)


def _request_hash() -> str:
    h = hashlib.sha256()
    h.update(request.method.encode() + b" " + request.path.encode() + b"\n")
    h.update(request.get_data(cache=True))
    return h.hexdigest()


def _claim() -> Response | None:
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None or not request.path.startswith("/v1/"):
        return None
    if not key or len(key) > 255:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1–255 characters", HEADER)
    from api.auth import current_principal

    try:
        principal = current_principal()
    except ApiError:
        return None  # the view answers 401 itself; nothing to remember
    db = current_app.extensions["voucher.db"]
    digest = _request_hash()
    with db.session() as session:
        try:
            with session.begin():
                ttl = timedelta(hours=current_app.config["VOUCHER_SETTINGS"].idempotency_ttl_hours)
                session.execute(delete(IdempotencyKey).where(
                    IdempotencyKey.api_key_id == principal.key_id, IdempotencyKey.key == key,
                    IdempotencyKey.created_at < utcnow() - ttl))
                row = IdempotencyKey(api_key_id=principal.key_id, key=key, request_hash=digest,
                                     status="processing")
                session.add(row)
            g.idempotency_row = row.id
            return None
        except IntegrityError:
            pass
        with session.begin():
            row = session.scalars(select(IdempotencyKey).where(
                IdempotencyKey.api_key_id == principal.key_id, IdempotencyKey.key == key)).first()
    if row is None:  # the other request failed and freed the key meanwhile: let the client retry
        raise ApiError(409, "idempotency_key_in_use", "Retry the request", HEADER)
    if row.request_hash != digest:
        raise ApiError(409, "idempotency_key_reused", "This Idempotency-Key was used with a different "
                       "request; keys can only be reused with the same parameters", HEADER,
                       type="idempotency_error")
    if row.status != "done":
        raise ApiError(409, "idempotency_key_in_use", "A request with this Idempotency-Key is still "
                       "being processed", HEADER, type="idempotency_error")
    resp = Response(row.response_body, status=row.response_status, mimetype="application/json")
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _store(resp: Response) -> Response:
    row_id = g.pop("idempotency_row", None)
    if row_id is None:
        return resp
    db = current_app.extensions["voucher.db"]
    with db.session() as session, session.begin():
        row = session.get(IdempotencyKey, row_id)
        if row is None:
            return resp
        if resp.status_code >= 500:
            session.delete(row)  # nothing happened: the client may retry with the same key
        else:
            row.status = "done"
            row.response_status = resp.status_code
            row.response_body = resp.get_data(as_text=True)
    return resp


def expire_answers(session: Session, older_than: timedelta = TTL) -> int:
    """Delete the stored answers (and abandoned claims) made more than `older_than` ago; how
    many. Their answers held the bodies of past requests' results: they are not kept forever."""
    result = session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.created_at < utcnow() - older_than))
    return result.rowcount


def init_idempotency(app: Flask) -> None:
    app.before_request(_claim)
    app.after_request(_store)
