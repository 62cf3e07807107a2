"""The webhook delivery worker: posts due deliveries to their receivers (docs/API.md#webhooks).

Runs outside the request path: `voucher webhooks` (its own process) and a thread of
`voucher scheduler`. Any number may run against one database; kernel/webhooks.py
`claim_due` leases each delivery to one of them, and a lease left by a killed worker
expires and is claimed again, so nothing is lost (at least once).

Posting: the event's JSON, `Content-Type: application/json`, signed with the endpoint's
secret (kernel/webhook_signature.py). Redirects are not followed and proxy variables of the
environment are ignored, so a delivery reaches only the allowed host it names; the host is
checked against the allow-list again before every attempt (the list may have shrunk).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.error
import urllib.request

from kernel.db import Database
from kernel.webhook_signature import HEADER, sign
from kernel.webhooks import (
    HOST_NOT_ALLOWED,
    Claimed,
    Retry,
    claim_due,
    host_allowed,
    record_outcome,
)

log = logging.getLogger("voucher.webhooks")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # a 3xx is an answer like any other non-2xx: the delivery is retried


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def post(claimed: Claimed, timeout: float) -> tuple[int | None, str | None]:  # float ok: seconds
    """POST one delivery; (status code, error) — the code is None when nothing answered."""
    request = urllib.request.Request(claimed.url, data=claimed.body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "voucher-webhooks/1",
        HEADER: sign(claimed.secret, claimed.body)})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            return response.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"[:500]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


def deliver_due(db: Database, retry: Retry, worker: str | None = None, limit: int = 10) -> int:
    """Claim and send one batch of due deliveries; returns how many were attempted."""
    worker = worker or worker_name()
    with db.session() as session:
        batch = claim_due(session, worker, retry, limit)
    for claimed in batch:
        if not host_allowed(claimed.url, retry.allowed_hosts):
            code, error = None, HOST_NOT_ALLOWED
        else:
            code, error = post(claimed, retry.timeout)
        with db.session() as session:
            status = record_outcome(session, claimed.id, worker, retry, code, error)
        log.info("webhook delivery", extra={"delivery": claimed.id, "status_code": code,
                                            "outcome": status, "error": error})
    return len(batch)


def deliver_until_idle(db: Database, retry: Retry, limit: int = 10) -> int:
    """Send batches until none is full (what is due now is sent); returns how many were attempted.
    The scheduler's `_webhooks` job calls it every second."""
    worker, total = worker_name(), 0
    while True:
        sent = deliver_due(db, retry, worker, limit)
        total += sent
        if sent < limit:
            return total


def run(db: Database, retry: Retry, stop: threading.Event, poll: float = 1.0,  # float ok: seconds
        limit: int = 10) -> None:
    """Deliver until `stop` is set: a full batch is followed at once by the next, an empty or
    partial one by a pause of `poll` seconds."""
    worker = worker_name()
    log.info("webhook worker started", extra={"worker": worker})
    while not stop.is_set():
        try:
            sent = deliver_due(db, retry, worker, limit)
        except Exception:  # the database away for a moment: keep the worker alive
            log.exception("webhook worker: batch failed")
            sent = 0
        if sent < limit:
            stop.wait(poll)
    log.info("webhook worker stopped", extra={"worker": worker})
