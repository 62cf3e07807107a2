"""Service endpoints: health, readiness, API keys."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text

from api.auth import requires, transaction
from api.errors import ApiError, not_found
from api.http import json_body, parse_model
from api.openapi import doc
from api.schemas.service import ApiKey, ApiKeyIn, Health, Ready
from kernel import audit
from kernel.keys import issue_key, revoke_key
from metering.registry import check_key_subject

bp = Blueprint("service", __name__)


@doc("Liveness: the process answers", response=Health, tags=["operations"])
@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@doc("Readiness: the database answers", response=Ready, tags=["operations"],
     errors={503: "The database is unreachable"})
@bp.get("/readyz")
def readyz():
    try:
        with current_app.extensions["voucher.db"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means not ready
        raise ApiError(503, "database_unavailable", f"Database unreachable: {type(exc).__name__}",
                       headers={"Retry-After": "5"}) from None
    return {"status": "ready"}




@doc("Issue an API key",
     description="The key is in the answer once and stored only as a hash. A provider key names "
                 "a registered provider, an enterprise key a registered USCC.",
     request=ApiKeyIn, response=ApiKey, status=201, tags=["api keys"],
     example={"role": "provider", "subject": "jx-zhisuan"})
@bp.post("/v1/api-keys")
@requires("finance")
def create_api_key():
    body = parse_model(ApiKeyIn, json_body())
    with transaction() as session:
        subject = check_key_subject(session, body.role, body.subject)
        row, plain = issue_key(session, body.role, subject)
        audit.append(session, "api_key.created", "api_key", row.id,
                     after={"role": body.role, "subject": subject})
    return ApiKey.dump(row, key=plain), 201


@doc("Revoke an API key", response=ApiKey, tags=["api keys"])
@bp.delete("/v1/api-keys/<key_id>")
@requires("finance")
def delete_api_key(key_id: str):
    with transaction() as session:
        row = revoke_key(session, key_id)
        if row is None:
            raise not_found("api key", key_id)
        if session.is_modified(row):  # revoking twice changes nothing
            audit.append(session, "api_key.revoked", "api_key", key_id,
                         before={"revoked_at": None}, after={"revoked_at": row.revoked_at})
    return ApiKey.dump(row)
