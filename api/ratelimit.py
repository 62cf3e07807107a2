"""Request limits on shared token buckets (api/buckets.py): failed authentications per client
address, and pushes per provider key (requests and records).

Failed authentications: each address has a bucket of `auth_fail_limit` tokens refilled over
`auth_fail_window` seconds, and every failed authentication takes one. A failure the bucket
cannot pay for answers 429 `rate_limited` with Retry-After instead of 401, in whichever worker
or replica it lands, since the bucket is shared (Redis or PostgreSQL). The worker that answered
that 429 then refuses every request from the address that needs a key, a correct key included,
until the bucket would pay again, without looking at the key. Other workers still answer a
correct key: with 256-bit keys a correct guess is not what the limit prevents; the volume of
guesses is. Requests without any key are not counted: they guess nothing.

Pushes: each provider key has a bucket of requests and one of records (a batch of n records
costs n); a push either bucket cannot pay for answers 429 `rate_limited` with Retry-After and
stores nothing.

Behind a proxy, `remote_addr` is the proxy's address unless the operator installs ProxyFix for
the trusted hops (see docs/SECURITY.md).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask

from api.buckets import Bucket, BucketStore, LocalStore, retry_after, store_for
from api.errors import ApiError

T = TypeVar("T")

MAX_ADDRESSES = 10_000  # blocked addresses remembered by one process; the oldest go first


class FailureLimiter:
    """Failed authentications per address: `limit` failures, refilled over `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.time,
                 store: BucketStore | None = None) -> None:
        self.bucket = Bucket(rate=limit / window, burst=limit) if limit > 0 and window > 0 else None
        self.clock = clock
        self.store = store or LocalStore()
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> until (this process)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again as far as this process knows, or None."""
        if self.bucket is None:
            return None
        with self._lock:
            until = self._blocked.get(address)
            now = self.clock()
            if until is None:
                return None
            if until <= now:
                del self._blocked[address]
                return None
            return retry_after(until - now)

    def failed(self, address: str) -> int | None:
        """Count one failure; the seconds to wait if it was one too many, else None."""
        if self.bucket is None:
            return None
        now = self.clock()
        wait = self.store.take(f"auth-fail:{address}", self.bucket, 1, now)
        if wait <= 0:
            return None
        with self._lock:
            self._blocked[address] = now + wait
            self._blocked.move_to_end(address)
            while len(self._blocked) > MAX_ADDRESSES:
                self._blocked.popitem(last=False)
        return retry_after(wait)


class PushLimiter:
    """Pushes per provider key: requests a second and records a second, each with a burst."""

    def __init__(self, requests: Bucket, records: Bucket, store: BucketStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.requests, self.records, self.store, self.clock = requests, records, store, clock

    def admit(self, key_id: str, n_records: int) -> None:
        """Take one request and `n_records` records from the key's buckets, or raise 429."""
        now = self.clock()
        for name, bucket, cost in (("requests", self.requests, 1), ("records", self.records, n_records)):
            if bucket.rate <= 0:  # 0 switches that limit off
                continue
            wait = self.store.take(f"push-{name}:{key_id}", bucket, cost, now)
            if wait > 0:
                seconds = retry_after(wait)
                raise ApiError(429, "rate_limited",
                               f"Too many usage-record {name} for this key; retry in {seconds} s",
                               headers={"Retry-After": str(seconds)})


def _app_once(app: Flask, name: str, make: Callable[[Any], T]) -> T:
    """`app.extensions[name]`, made on first use by `make(settings)`."""
    made = app.extensions.get(name)
    if made is None:
        made = app.extensions[name] = make(app.config["VOUCHER_SETTINGS"])
    return made


def bucket_store_of(app: Flask) -> BucketStore:
    return _app_once(app, "voucher.buckets", lambda settings: store_for(
        settings.redis_url, settings.redis_prefix, app.extensions["voucher.db"]))


def limiter_of(app: Flask) -> FailureLimiter:
    """The app's failed-authentication limiter, made on first use from its settings."""
    return _app_once(app, "voucher.auth_failures", lambda settings: FailureLimiter(
        settings.auth_fail_limit, settings.auth_fail_window, store=bucket_store_of(app)))


def push_limiter_of(app: Flask) -> PushLimiter:
    return _app_once(app, "voucher.push_limits", lambda s: PushLimiter(
        Bucket(s.push_requests_per_second, s.push_requests_burst),
        Bucket(s.push_records_per_second, s.push_records_burst), bucket_store_of(app)))
