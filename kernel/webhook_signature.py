"""Signing webhook deliveries, and checking them on the receiving side (docs/API.md#webhook-verify).

Header: `Voucher-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

This module needs only the standard library, so a receiver can copy it as it is:

    from kernel.webhook_signature import verify, SignatureError
    try:
        verify(secret, request.headers["Voucher-Signature"], request.body)   # raw bytes
    except SignatureError:
        return 400

`verify` refuses a timestamp more than `tolerance` seconds (default 300) from now, so a
captured delivery cannot be replayed later; within the tolerance, receivers deduplicate by
the event's `id` (delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Voucher-Signature"


class SignatureError(ValueError):
    """The header is missing or malformed, the signature does not match, or it is too old."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    payload = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for posting `body` now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={signature(secret, t, body)}"


def verify(secret: str, header: str | None, body: bytes, tolerance: int = 300,
           now: float | None = None) -> int:
    """Check a delivery; returns its timestamp, raises SignatureError otherwise.

    `body` must be the raw bytes received (not re-serialised JSON). Several `v1=` values
    (as during a secret rotation) are accepted if any matches.
    """
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    timestamp, candidates = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {HEADER} header")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance} s from now")
    return timestamp
