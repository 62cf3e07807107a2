"""The two hottest requests' common answers without Flask's request machinery
(docs/ARCHITECTURE.md#fast-path, #hold-fast-path).

`GET /v1/enterprises/{uscc}/quota` is the read every enterprise polls; `POST /v1/redemptions`
is what a provider's checkout sends for every order. Their data travel in one round trip each
(api/hotread.py; for an authorisation one read and one call of the database's voucher_hold);
what remained was Flask's own per-request work — the request context, routing, the hooks, the
Response object — which cost more than the database work (docs/BENCHMARKS.md). This WSGI layer,
in front of the app, answers the common case itself and gives every other request to the Flask
route unchanged:

- the quota: GET, a canonical 18-character USCC in the path, no query or `year=YYYY` only, a
  bearer key the failure limit admits, no cookie, one programme running, and a valid
  enterprise key for that USCC or a finance key, for a registered enterprise;
- an authorisation (PostgreSQL only): POST with a JSON body of known length, no cookie and no
  Idempotency-Key, a valid provider key, a body RedemptionIn accepts, and a request
  billing.redemptions.plan_hold finds plain (a new reference, an open period, a balance row, no
  budget, no threshold crossed, something to hold) and voucher_hold then applies (the balance
  had not moved since the read);
- anything else — a bad or missing key, another enterprise, `program=`, a replay, an odd year,
  an exhausted quota, HEAD, a database error — goes to the Flask route, which answers it as it
  always has (counting a failed key once, answering errors in the API's body). Nothing is
  written before the route takes over: voucher_hold writes all or nothing.

Nothing here is a second rule: the statements, the key check (kernel.keys.check_key), the roles
(the views' own `roles`), the decisions (billing), the answers (api.schemas), the JSON (the
app's provider, compact, with Flask's trailing newline), the request id, the metrics
(api.metrics.count_request) and the log line (api.requestlog.log_request) are the routes'.
tests/test_fastpath.py holds the two paths' answers, headers, rows, metrics and log lines equal.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from flask import Flask
from pydantic import ValidationError
from werkzeug.http import HTTP_STATUS_CODES

from api.hotread import balance_of_row, hold_call, hold_with_key, hot_reads, quota_params
from api.http import MAX_JSON_DEPTH
from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.metrics import count_request
from api.ratelimit import limiter_of
from api.requestlog import REQUEST_ID_HEADER, log_request, request_id_from
from api.schemas.billing import Quota
from api.schemas.redemptions import Redemption as RedemptionOut
from api.schemas.redemptions import RedemptionIn
from billing.redemptions import HoldFigures, hold_arguments, plan_hold
from kernel.audit import Actor
from kernel.db import utcnow
from kernel.keys import Principal, check_key, key_select, parse_key
from kernel.periods import local_year, period_year
from kernel.vocabulary import EVENT_OF_ACTION, AuditAction
from kernel.webhooks import GIVE_UP_AFTER, wants

log = logging.getLogger("voucher.fastpath")

QUOTA_ENDPOINT = "billing.get_quota"
HOLD_ENDPOINT = "redemptions.authorize_redemption"
_QUOTA_PATH = re.compile(r"/v1/enterprises/([0-9A-HJ-NP-RT-UW-Y]{18})/quota")  # canonical USCC characters
_YEAR_QUERY = re.compile(r"(?:year=([0-9]{4}))?")
_WSGI_REQUEST_ID = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
_WSGI_IDEMPOTENCY = "HTTP_" + IDEMPOTENCY_HEADER.upper().replace("-", "_")
_HOLD_EVENT = EVENT_OF_ACTION[AuditAction.REDEMPTION_AUTHORIZED]

Answer = tuple[int, dict[str, Any] | str, str, Principal] | None  # status, body (or its JSON), route, principal


class FastPaths:
    """WSGI middleware: the common answers here, every other request to `wsgi_app`."""

    def __init__(self, app: Flask, wsgi_app: Any, quota_read: Any) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        # the quota route's own statement; the authorisation's read and call (the route itself
        # takes billing.redemptions.authorize's path)
        self.quota_read, self.hold_read, self.hold_call = quota_read, hold_with_key(key_select()), hold_call()
        self.quota_roles = app.view_functions[QUOTA_ENDPOINT].roles  # type: ignore[attr-defined]
        self.hold_roles = app.view_functions[HOLD_ENDPOINT].roles  # type: ignore[attr-defined]
        self.routes = {endpoint: rule.rule for rule in app.url_map.iter_rules()
                       for endpoint in (QUOTA_ENDPOINT, HOLD_ENDPOINT) if rule.endpoint == endpoint}
        db = app.extensions["voucher.db"]
        self.reads = hot_reads(db)
        self.holds = db.dialect == "postgresql"  # voucher_hold exists there only (migration 0019)
        self.extensions = app.extensions  # read per request, as the routes read them
        self.limiter = limiter_of(app)
        self.max_body = app.config.get("MAX_CONTENT_LENGTH")
        # Flask's JSON answers: compact unless debug asks for indentation (then Flask answers).
        self.enabled = not app.debug and getattr(app.json, "compact", None) is not False

    def __call__(self, environ: dict[str, Any], start_response: Any):
        if self.enabled and "HTTP_COOKIE" not in environ:
            started = time.perf_counter()
            method = environ.get("REQUEST_METHOD")
            try:
                if method == "GET":
                    answer = self._quota(environ)
                elif method == "POST" and environ.get("PATH_INFO") == "/v1/redemptions" and self.holds:
                    answer = self._hold(environ)
                else:
                    answer = None
            except Exception:  # a defect here must not cost the request: the route answers it
                log.exception("fast path failed; the route answers %s %s", method, environ.get("PATH_INFO"))
                answer = None
            if answer is not None:
                return self._respond(environ, start_response, started, *answer)
        return self.wsgi_app(environ, start_response)

    def _respond(self, environ, start_response, started: float, status: int, payload: dict[str, Any] | str,
                 route: str, principal: Principal):
        text = payload if isinstance(payload, str) else self._json(payload)
        body = (text + "\n").encode()
        request_id = environ["voucher.request_id"]
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            (REQUEST_ID_HEADER, request_id), ("X-Content-Type-Options", "nosniff")])
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        count_request(route, method, status, time.perf_counter() - started)
        log_request(request_id, route, method, path, status, started, principal.key_id,
                    environ.get("REMOTE_ADDR"))
        return [body]

    def _json(self, payload: dict[str, Any]) -> str:
        return self.app.json.dumps(payload, separators=(",", ":"))

    def _key(self, environ: dict[str, Any]) -> tuple[str, str] | None:
        """The bearer key's (id, secret) when the failure limit admits the address."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header[:7].lower() != "bearer ":
            return None
        parsed = parse_key(header[7:].strip())
        if parsed is None or self.limiter.retry_after(environ.get("REMOTE_ADDR") or "-") is not None:
            return None
        return parsed

    # --- GET /v1/enterprises/{uscc}/quota ------------------------------------------------------

    def _quota(self, environ: dict[str, Any]) -> Answer:
        m = _QUOTA_PATH.fullmatch(environ.get("PATH_INFO", ""))
        q = _YEAR_QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        if m is None or q is None or self.extensions["voucher.programmes"].others:
            return None  # several programmes: the answer carries `combined`, the route computes it
        key = self._key(environ)
        if key is None:
            return None
        uscc, policy = m.group(1), self.extensions["voucher.policy"]
        year = int(q.group(1)) if q.group(1) else local_year(datetime.now(UTC), policy.timezone)
        if not 2000 <= year <= 2100:
            return None
        try:
            row = self.reads.first(self.quota_read, {"key_id": key[0], **quota_params(policy, uscc, year)})
        except Exception:  # noqa: BLE001 - the route meets the same error and answers it (503, …)
            return None
        principal = check_key(key[0], key[1], row)
        if (principal is None or principal.role not in self.quota_roles or row.enterprise is None
                or (principal.role == "enterprise" and principal.subject != uscc)):
            return None
        environ["voucher.request_id"] = request_id_from(environ.get(_WSGI_REQUEST_ID))
        return 200, Quota.dump(balance_of_row(row, uscc, year)), self.routes[QUOTA_ENDPOINT], principal

    # --- POST /v1/redemptions ------------------------------------------------------------------

    def _hold(self, environ: dict[str, Any]) -> Answer:
        if _WSGI_IDEMPOTENCY in environ or environ.get("QUERY_STRING"):
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None  # chunked or malformed: the route reads it
        if length <= 0 or (self.max_body is not None and length > self.max_body):
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # the route reads the same bytes if it answers
        key = self._key(environ)
        if key is None or len(raw) != length or raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
            return None
        try:
            body = RedemptionIn.model_validate(json.loads(raw, parse_float=Decimal))
        except (ValueError, UnicodeDecodeError, RecursionError, ValidationError):
            return None
        policy = self.extensions["voucher.policy"]
        try:
            year = period_year(body.period)
            row = self.reads.first(self.hold_read, {
                "key_id": key[0], "period": body.period, "reference": body.reference,
                **quota_params(policy, body.enterprise_uscc, year)})
        except Exception:  # noqa: BLE001 - the route meets the same error and answers it
            return None
        principal = check_key(key[0], key[1], row)
        if principal is None or principal.role not in self.hold_roles:
            return None
        figures = HoldFigures(registered=row.enterprise is not None, eligible=row.eligible == "t",
                              period_state=row.period_state, taken=row.taken == "t", row_cap=row.row_cap,
                              cap=row.cap, cap_basis=row.cap_basis, reserved=row.reserved, granted=row.granted)
        now = utcnow()
        plan = plan_hold(policy, principal.subject, body.enterprise_uscc, body.reference, body.list_amount,
                         body.period, figures, row.rid, now)
        if plan is None:
            return None
        request_id = environ["voucher.request_id"] = request_id_from(environ.get(_WSGI_REQUEST_ID))
        answer = self._json(RedemptionOut.dump(plan.redemption))  # the answer's JSON, and the event's object
        event = SimpleNamespace(type=_HOLD_EVENT, enterprise_uscc=body.enterprise_uscc,
                                provider_id=principal.subject)
        endpoints = [ep["id"] for ep in json.loads(row.endpoints or "[]")
                     if wants(SimpleNamespace(**ep), event)]  # type: ignore[arg-type]
        arguments = hold_arguments(policy, plan, Actor(principal.role, principal.key_id, request_id), answer,
                                   endpoints, now + timedelta(seconds=GIVE_UP_AFTER))
        try:
            written = self.reads.first(self.hold_call, arguments)
        except Exception:  # noqa: BLE001 - all or nothing was written; the route answers either way
            return None
        if written is None or written.event_id is None:
            return None  # the balance moved or the reference was taken since the read
        return 201, answer, self.routes[HOLD_ENDPOINT], principal
