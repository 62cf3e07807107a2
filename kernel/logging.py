"""Structured logs: one JSON object per line, for every process (API, scheduler, CLI).

Lines logged while an HTTP request is handled carry its id: the HTTP edge
(`api.requestlog`) tells this module where to find it (`set_request_id_source`), and
writes one line per request itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

FIELDS = ("request_id", "route", "method", "path", "status", "duration_ms", "key_id", "remote")
_HANDLER_MARK = "_voucher_handler"

OUTSIDE_REQUEST: Any = object()  # what the request id source answers outside a request

# The current request's id (None if it has none yet), or OUTSIDE_REQUEST; set by the HTTP edge.
_request_id_source: Callable[[], Any] | None = None


def set_request_id_source(source: Callable[[], Any]) -> None:
    """Where lines logged inside a request find its id (`api.requestlog` sets it)."""
    global _request_id_source
    _request_id_source = source


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
        if getattr(record, "request_id", None) is None and _request_id_source is not None:
            request_id = _request_id_source()
            if request_id is not OUTSIDE_REQUEST:
                record.request_id = request_id
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
