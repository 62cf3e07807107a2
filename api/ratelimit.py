"""Failed authentications, limited per client address (a sliding window in this process).

After `limit` failed authentications from one address within `window` seconds, every request
from that address that needs a key answers 429 with Retry-After until the oldest failure
leaves the window, a correct key included, so guessing gains nothing from the answers.
Requests without any key are not counted: they guess nothing.

The window lives in each worker process: with N gunicorn workers an address gets at most
N × limit failures per window. A shared store (Redis, the database) or the reverse proxy's own
limit is the upgrade path when that is too loose. Behind a proxy, `remote_addr` is the proxy's
address unless the operator installs ProxyFix for the trusted hops (see docs/SECURITY.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from flask import Flask

MAX_ADDRESSES = 10_000  # tracked at once; beyond that the quietest are forgotten first


class FailureLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it may now."""
        if self.limit <= 0:
            return None
        with self._lock:
            now = self.clock()
            failures = self._recent(address, now)
            if failures is None or len(failures) < self.limit:
                return None
            # Admitted again once enough failures have left the window.
            oldest_that_counts = failures[len(failures) - self.limit]
            return max(1, math.ceil(oldest_that_counts + self.window - now))

    def failed(self, address: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            now = self.clock()
            failures = self._recent(address, now)
            if failures is None:
                failures = self._failures[address] = deque()
            failures.append(now)
            # The last `limit` failures decide; older ones only cost memory.
            while len(failures) > self.limit:
                failures.popleft()
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)


def limiter_of(app: Flask) -> FailureLimiter:
    """The app's limiter, made on first use from its settings."""
    limiter = app.extensions.get("voucher.auth_failures")
    if limiter is None:
        settings = app.config["VOUCHER_SETTINGS"]
        limiter = app.extensions["voucher.auth_failures"] = FailureLimiter(
            settings.auth_fail_limit, settings.auth_fail_window)
    return limiter
