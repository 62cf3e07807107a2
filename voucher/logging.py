"""Structured logs: one JSON object per line, and one line per HTTP request.

Each request gets an id: the client's `X-Request-Id` when it is safe (at most 64 of
`[A-Za-z0-9._-]`), else a fresh uuid4 hex. It is returned on every response, errors
included, and stamped on every log line written while the request is handled. The request
line names the key id (`key_…`) of an authenticated caller, never the key or the
Authorization header.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import IO, Any

from flask import Flask, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-Id"
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FIELDS = ("request_id", "route", "method", "path", "status", "duration_ms", "key_id", "remote")
_HANDLER_MARK = "_voucher_handler"

request_log = logging.getLogger("voucher.request")


class JsonFormatter(logging.Formatter):
    """ts, level, logger, message, the request fields present, and exc for exceptions."""

    # One encoder for every line (json.dumps with options builds a new one per call).
    _encoder = json.JSONEncoder(ensure_ascii=False, default=str)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            # UTC, milliseconds, "Z": what datetime.isoformat(timespec="milliseconds") gave,
            # without building a datetime for every line.
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(out)


class RequestContextFilter(logging.Filter):
    """Stamps the current request's id on lines logged inside a request (errors, warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None and has_request_context():
            record.request_id = g.get("request_id")
        return True


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def configure_logging(json_lines: bool = True, level: int | str = logging.INFO,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Install one handler on the root logger (idempotent: a second call replaces it)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", defaults={"request_id": "-"}))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def request_id_from(header: str | None) -> str:
    if header and SAFE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def init_request_logging(app: Flask) -> None:
    """Request id in and out, and one `voucher.request` line per request."""

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
        level = logging.ERROR if status >= 500 else logging.INFO
        if not request_log.isEnabledFor(level):
            return response
        started = ctx.get("request_started")
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        rule = req.url_rule
        principal = ctx.get("principal")
        method, path = req.method, req.path
        request_log.log(level, "%s %s %s", method, path, status, extra={
            "request_id": request_id,
            "route": rule.rule if rule is not None else None,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "key_id": getattr(principal, "key_id", None),
            "remote": req.remote_addr,
        })
        return response
