"""The quota read's common answer without Flask's request machinery (docs/ARCHITECTURE.md#fast-path).

`GET /v1/enterprises/{uscc}/quota` is the read every enterprise polls. Its statement is one
round trip (api/hotread.py); what remained was Flask's own per-request work — the request
context, routing, the hooks, the Response object — which cost more than the read itself
(docs/BENCHMARKS.md#quota). This WSGI layer, in front of the app, answers the common case
itself and gives every other request to the Flask route unchanged:

- answered here: GET, a canonical 18-character USCC in the path, no query or `year=YYYY`
  only, a bearer key the failure limit admits, no cookie, one programme running, and a
  key that is a valid enterprise key for that USCC or a finance key, for a registered
  enterprise;
- anything else — a bad or missing key, another enterprise, an unknown one, `program=`,
  an odd year, HEAD, a database error — goes to the Flask route, which answers it as it
  always has (counting a failed key once, answering errors in the API's body).

Nothing here is a second rule: the statement, the key check (kernel.keys.check_key), the
roles (the view's own `roles`), the answer (api.schemas.billing.Quota), the JSON (the app's
provider, compact, with Flask's trailing newline), the request id, the metrics
(api.metrics.count_request) and the log line (api.requestlog.log_request) are the Flask
route's. tests/api/test_fastpath.py holds the two paths' answers, headers, metrics and log
lines equal.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from api.hotread import balance_of_row, hot_reads, quota_params
from api.metrics import count_request
from api.ratelimit import limiter_of
from api.requestlog import REQUEST_ID_HEADER, log_request, request_id_from
from api.schemas.billing import Quota
from kernel.keys import check_key, parse_key
from kernel.periods import local_year

ENDPOINT = "billing.get_quota"
_PATH = re.compile(r"/v1/enterprises/([0-9A-HJ-NP-RT-UW-Y]{18})/quota")  # canonical USCC characters
_QUERY = re.compile(r"(?:year=([0-9]{4}))?")
_WSGI_ID = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


class QuotaFastPath:
    """WSGI middleware: the quota's common answer here, every other request to `wsgi_app`."""

    def __init__(self, app: Flask, wsgi_app: Any, statement: Any) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.statement = statement  # the route's own quota_with_key(key_select()) statement
        self.roles = app.view_functions[ENDPOINT].roles  # type: ignore[attr-defined]
        (self.route,) = (rule.rule for rule in app.url_map.iter_rules(ENDPOINT))
        self.reads = hot_reads(app.extensions["voucher.db"])
        self.extensions = app.extensions  # read per request, as the route reads them
        self.limiter = limiter_of(app)
        json = app.json
        # Flask's JSON answers: compact unless debug asks for indentation (then Flask answers).
        self.enabled = not app.debug and getattr(json, "compact", None) is not False

    def __call__(self, environ: dict[str, Any], start_response: Any):
        answer = self._answer(environ) if self.enabled else None
        if answer is None:
            return self.wsgi_app(environ, start_response)
        start_response("200 OK", answer[0])
        return [answer[1]]

    def _answer(self, environ: dict[str, Any]) -> tuple[list[tuple[str, str]], bytes] | None:
        """The 200 answer's headers and body, or None: the Flask route answers instead."""
        if environ.get("REQUEST_METHOD") != "GET" or "HTTP_COOKIE" in environ:
            return None
        path = environ.get("PATH_INFO", "")
        m = _PATH.fullmatch(path)
        q = _QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        header = environ.get("HTTP_AUTHORIZATION", "")
        if m is None or q is None or not header[:7].lower() == "bearer ":
            return None
        started = time.perf_counter()
        if self.extensions["voucher.programmes"].others:
            return None  # the answer carries `combined`: the route computes it
        parsed = parse_key(header[7:].strip())
        remote = environ.get("REMOTE_ADDR")
        if parsed is None or self.limiter.retry_after(remote or "-") is not None:
            return None
        uscc, policy = m.group(1), self.extensions["voucher.policy"]
        year = int(q.group(1)) if q.group(1) else local_year(datetime.now(UTC), policy.timezone)
        if not 2000 <= year <= 2100:
            return None
        try:
            row = self.reads.first(self.statement, {"key_id": parsed[0], **quota_params(policy, uscc, year)})
        except Exception:  # noqa: BLE001 - the route meets the same error and answers it (503, …)
            return None
        principal = check_key(parsed[0], parsed[1], row)
        if (principal is None or principal.role not in self.roles or row.enterprise is None
                or (principal.role == "enterprise" and principal.subject != uscc)):
            return None
        body = (self.app.json.dumps(Quota.dump(balance_of_row(row, uscc, year)), separators=(",", ":"))
                + "\n").encode()
        request_id = request_id_from(environ.get(_WSGI_ID))
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   (REQUEST_ID_HEADER, request_id), ("X-Content-Type-Options", "nosniff")]
        count_request(self.route, "GET", 200, time.perf_counter() - started)
        log_request(request_id, self.route, "GET", path, 200, started, principal.key_id, remote)
        return headers, body
