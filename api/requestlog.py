"""One log line per HTTP request, and the request id on every line logged while it runs.

Each request gets an id: the client's `X-Request-Id` when it is safe (at most 64 of
`[A-Za-z0-9._-]`), else 32 fresh random hex digits. It is returned on every response, errors
included, and stamped on every log line written while the request is handled (through
`kernel.logging`, which formats every process's lines). The request line names the key id
(`key_…`) of an authenticated caller, never the key or the Authorization header.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from flask import Flask, g, has_request_context, request

from kernel.logging import OUTSIDE_REQUEST, set_request_id_source

REQUEST_ID_HEADER = "X-Request-Id"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

request_log = logging.getLogger("voucher.request")


def current_request_id() -> Any:
    """The id of the request being handled (None before it has one), or OUTSIDE_REQUEST."""
    if has_request_context():
        return g.get("request_id")
    return OUTSIDE_REQUEST


def request_id_from(header: str | None) -> str:
    if header and SAFE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)  # 32 hex digits like uuid4().hex, without building a UUID


def init_request_logging(app: Flask) -> None:
    """Request id in and out, and one `voucher.request` line per request."""
    set_request_id_source(current_request_id)

    @app.before_request
    def _begin():
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_started = time.perf_counter()

    @app.after_request
    def _end(response):
        # Each proxy resolved once: this runs for every request.
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        request_id = ctx.get("request_id") or request_id_from(req.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = request_id
        status = response.status_code
        if request_log.isEnabledFor(logging.ERROR if status >= 500 else logging.INFO):
            rule = req.url_rule
            log_request(request_id, rule.rule if rule is not None else None, req.method, req.path, status,
                        ctx.get("request_started"), getattr(ctx.get("principal"), "key_id", None),
                        req.remote_addr)
        return response


def log_request(request_id: str, route: str | None, method: str, path: str, status: int,
                started: float | None, key_id: str | None, remote: str | None) -> None:
    """The one `voucher.request` line of a request (the Flask hook's and api.fastpath's)."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if not request_log.isEnabledFor(level):
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    request_log.log(level, "%s %s %s", method, path, status, extra={
        "request_id": request_id,
        "route": route,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "key_id": key_id,
        "remote": remote,
    })
