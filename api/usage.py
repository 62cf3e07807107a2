"""Usage-record endpoints: push a batch, list, read one, void (docs/API.md#usage-records)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, current_app

from api.auth import current_principal, db_session, requires, scoped_filter, transaction
from api.errors import ApiError, not_found
from api.http import cursor, json_body, page_args, parse_model, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.ratelimit import push_limiter_of
from api.schemas.usage import UsageBatch, UsageBatchIn, UsageRecord, VoidIn
from kernel import audit
from kernel.periods import parse_period
from kernel.uscc import canonical_uscc
from metering.batches import record_batch
from metering.ingest import ingest_records
from metering.usage import get_record, list_records, parse_public_id, void_record

bp = Blueprint("usage", __name__, url_prefix="/v1")


@doc("Push a batch of usage records",
     description="Up to 5,000 records. Each is judged on its own and answered in input order: "
                 "`accepted`, `duplicate` (same record_id, same content: an idempotent replay) or "
                 "`rejected` with its error code (`conflict` when the record_id was stored with "
                 "different content). Accepted records are durable when the answer is sent.",
     request=UsageBatchIn, response=UsageBatch, tags=["usage records"],
     errors={413: "More records than VOUCHER_MAX_BATCH_RECORDS"},
     example={"records": [{"record_id": "job-4103947-1", "enterprise_uscc": "91330402MA2B7K3X13",
                           "resource": "gpu.h800", "unit": "gpu_hour", "quantity": "12.5",
                           "started_at": "2026-10-15T09:00:00+08:00",
                           "ended_at": "2026-10-15T10:00:00+08:00", "amount": 600000,
                           "currency": "CNY", "metadata": {"cluster": "jx-hpc"}}]})
@bp.post("/usage-records")
@requires("provider")
def push_usage_records():
    principal = current_principal()
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "Request body must be a JSON object with a records array")
    records = body.get("records")
    if not isinstance(records, list):
        raise ApiError(400, "bad_request", "records must be an array of usage records", "records")
    settings = current_app.config["VOUCHER_SETTINGS"]
    if len(records) > settings.max_batch_records:
        raise ApiError(413, "batch_too_large",
                       f"At most {settings.max_batch_records} records per request; got {len(records)}",
                       "records")
    if not records:
        raise ApiError(422, "empty_batch", "records must not be empty", "records")
    extra = set(body) - {"records"}
    if extra:
        raise ApiError(422, "unknown_field", f"Unknown field {sorted(extra)[0]}", sorted(extra)[0])
    push_limiter_of(current_app).admit(principal.key_id, len(records))  # 429 before any write
    with transaction() as session:
        result = ingest_records(session, principal.subject, records,
                                future_skew=timedelta(seconds=settings.future_skew_seconds),
                                require_contracts=current_app.extensions["voucher.policy"].require_contracts)
        record_batch(session, principal.subject, "api", result)
    current_app.extensions["voucher.events"].batch_ingested(principal.subject, result)
    return UsageBatch.dump_batch(result)


def _scope_filters() -> tuple[str | None, str | None]:
    principal = current_principal()
    provider = query_arg("provider")
    enterprise = query_arg("enterprise", canonical_uscc)
    return (scoped_filter(principal, "provider", provider),
            scoped_filter(principal, "enterprise", enterprise))


@doc("List usage records",
     description="A provider sees its own, an enterprise its own, finance all.",
     response=ListOf(UsageRecord), tags=["usage records"],
     query=[query("provider", "Provider id"), query("enterprise", "Enterprise USCC"),
            query("period", "YYYY-MM (Asia/Shanghai)", example="2026-10"),
            query("status", "active or void", enum=["active", "void"]), *PAGE])
@bp.get("/usage-records")
@requires("finance", "provider", "enterprise")
def list_usage_records():
    provider, enterprise = _scope_filters()
    period = query_arg("period")
    if period:
        query_arg("period", parse_period)
    status = query_arg("status")
    if status and status not in ("active", "void"):
        raise ApiError(400, "invalid_query", "status must be active or void", "status")
    limit, after = page_args()
    after_id = cursor(parse_public_id, after)
    rows, has_more = list_records(db_session(), provider_id=provider, enterprise_uscc=enterprise,
                                  period=period, status=status, limit=limit, after_id=after_id)
    return UsageRecord.page(rows, has_more, "/v1/usage-records")


def _target_provider() -> str:
    principal = current_principal()
    if principal.role == "provider":
        return principal.subject
    provider = query_arg("provider")
    if not provider:
        raise ApiError(400, "missing_param", "finance must name the provider (?provider=ID)", "provider")
    return provider


@doc("Read one usage record by the provider's record_id", response=UsageRecord,
     tags=["usage records"], query=[query("provider", "Provider id (finance must name it)")])
@bp.get("/usage-records/<path:record_id>")
@requires("finance", "provider")
def get_usage_record(record_id: str):
    record = get_record(db_session(), _target_provider(), record_id)
    if record is None:
        raise not_found("usage record", record_id)
    return UsageRecord.dump(record)


@doc("Void a usage record",
     description="A record is never edited or deleted; voiding is idempotent. A void after its "
                 "claim was approved is clawed back at the next reconciliation.",
     request=VoidIn, request_required=False, response=UsageRecord, tags=["usage records"],
     example={"reason": "pushed twice under two record ids"},
     query=[query("provider", "Provider id (finance must name it)")])
@bp.delete("/usage-records/<path:record_id>")
@requires("finance", "provider")
def void_usage_record(record_id: str):
    body = json_body(required=False)
    reason = parse_model(VoidIn, body if isinstance(body, dict) else {}).reason
    provider_id = _target_provider()
    with transaction() as session:
        record = get_record(session, provider_id, record_id, lock=True)
        if record is None:
            raise not_found("usage record", record_id)
        record, changed = void_record(session, record, reason)
        if changed:
            audit.append(session, "usage_record.voided", "usage_record", f"ur_{record.id}",
                         before={"status": "active"},
                         after={"status": record.status, "reason": reason,
                                "provider_id": record.provider_id, "record_id": record.record_id,
                                "amount": record.amount})
            current_app.extensions["voucher.events"].record_voided(session, record)
    return UsageRecord.dump(record)
