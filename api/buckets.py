"""Token buckets shared by every worker and replica: Redis, else PostgreSQL, else this process.

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; `take(key, bucket,
cost)` removes `cost` tokens if the bucket has them and answers 0, or changes nothing and
answers the seconds until it would have them. A cost larger than the burst is charged as the
whole burst (a full bucket admits it), so the burst never has to exceed the largest request.

Where the counts live (`store_for`):
- `VOUCHER_REDIS_URL` set: Redis, one hash per bucket updated by a Lua script (atomic), keys
  under `VOUCHER_REDIS_PREFIX` expiring once the bucket would be full again;
- PostgreSQL: the `rate_bucket` table, one row per bucket, taken with one conditional
  `UPDATE … RETURNING` (the row lock makes concurrent takes queue; nothing is read first);
- SQLite: in this process only — with several gunicorn workers each has its own buckets,
  so limits are per worker (SQLite deployments are single-host demos; docs/SECURITY.md).

Times are Unix seconds from the caller's clock (`time.time`), the same on one host; across
hosts, clock skew of a second shifts a refill by `rate` tokens, no more. If the shared store
cannot be reached the take is admitted and logged (limits must not take the service down).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Float, String, text
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base

log = logging.getLogger("voucher.buckets")

MAX_LOCAL_BUCKETS = 10_000  # kept in one process; beyond that the least recently used go
IDLE_ROWS_AFTER = 3600  # seconds: a row untouched this long is full again and may be deleted


class RateBucket(Base):
    """One shared bucket (PostgreSQL store): tokens left at `updated_at` (Unix seconds)."""

    __tablename__ = "rate_bucket"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, index=True)


@dataclass(frozen=True)
class Bucket:
    rate: float  # tokens a second
    burst: float  # tokens when full

    def refill(self, tokens: float, elapsed: float) -> float:
        return min(self.burst, tokens + max(0.0, elapsed) * self.rate)

    def wait(self, tokens: float, cost: float) -> float:
        return max(0.0, (cost - tokens) / self.rate) if self.rate > 0 else math.inf


class BucketStore(Protocol):
    def take(self, key: str, bucket: Bucket, cost: float = 1, now: float | None = None) -> float:
        """0 when `cost` tokens were taken; otherwise seconds to wait (nothing taken)."""


class LocalStore:
    """Buckets in this process (SQLite, tests)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, bucket: Bucket, cost: float = 1, now: float | None = None) -> float:
        now = time.time() if now is None else now
        cost = min(cost, bucket.burst)
        with self._lock:
            tokens, updated = self._buckets.get(key, (bucket.burst, now))
            tokens = bucket.refill(tokens, now - updated)
            if tokens < cost:
                return bucket.wait(tokens, cost)
            self._buckets[key] = (tokens - cost, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > MAX_LOCAL_BUCKETS:
                self._buckets.popitem(last=False)
            return 0.0


# KEYS[1] bucket; ARGV rate, burst, cost, now. Returns the wait as a string (Lua numbers
# become integers on the way out).
_TAKE_LUA = """
local rate, burst, cost, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < cost then
  return tostring((cost - tokens) / rate)
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return '0'
"""


class _SharedStore:
    """A store in another process (Redis, PostgreSQL): a bucket that never refills refuses
    at once, without a round trip; the store's `_take` does the rest."""

    def take(self, key: str, bucket: Bucket, cost: float = 1, now: float | None = None) -> float:
        now = time.time() if now is None else now
        cost = min(cost, bucket.burst)
        if bucket.rate <= 0:
            return math.inf
        return self._take(key, bucket, cost, now)

    def _take(self, key: str, bucket: Bucket, cost: float, now: float) -> float:
        raise NotImplementedError


class RedisStore(_SharedStore):
    def __init__(self, client: Any, prefix: str = "voucher:") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_TAKE_LUA)
        self._down = False

    def _take(self, key: str, bucket: Bucket, cost: float, now: float) -> float:
        try:
            wait = float(self._script(keys=[f"{self.prefix}bucket:{key}"],
                                    args=[repr(bucket.rate), repr(bucket.burst), repr(cost), repr(now)]))
        except Exception as exc:  # redis.RedisError, OSError: limits must not take the service down
            if not self._down:
                log.error("rate limits admit everything: Redis unreachable: %s", exc)
            self._down = True
            return 0.0
        self._down = False
        return wait


class PostgresStore(_SharedStore):
    _UPDATE = text(
        "UPDATE rate_bucket SET tokens = least(:burst, tokens + greatest(0, :now - updated_at) * :rate)"
        " - :cost, updated_at = :now"
        " WHERE key = :key AND least(:burst, tokens + greatest(0, :now - updated_at) * :rate) >= :cost"
        " RETURNING tokens")
    _INSERT = text(
        "INSERT INTO rate_bucket (key, tokens, updated_at) VALUES (:key, :burst - :cost, :now)"
        " ON CONFLICT (key) DO NOTHING RETURNING tokens")
    _READ = text("SELECT tokens, updated_at FROM rate_bucket WHERE key = :key")
    _PURGE = text("DELETE FROM rate_bucket WHERE updated_at < :before")

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def _take(self, key: str, bucket: Bucket, cost: float, now: float) -> float:
        params = {"key": key, "rate": bucket.rate, "burst": bucket.burst, "cost": cost, "now": now}
        try:
            with self.engine.begin() as conn:  # its own short transaction, never the request's
                for _ in range(3):  # a concurrent insert or refill between statements: try again
                    if conn.execute(self._UPDATE, params).first() is not None:
                        return 0.0
                    row = conn.execute(self._READ, params).first()
                    if row is None:
                        if conn.execute(self._INSERT, params).first() is not None:
                            conn.execute(self._PURGE, {"before": now - IDLE_ROWS_AFTER})
                            return 0.0
                        continue
                    wait = bucket.wait(bucket.refill(row.tokens, now - row.updated_at), cost)
                    if wait > 0:
                        return wait
        except Exception as exc:  # the request's own queries will report a database outage
            log.error("rate limit not applied: %s: %s", type(exc).__name__, exc)
        return 0.0


def store_for(redis_url: str, redis_prefix: str, database: Any) -> BucketStore:
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return RedisStore(client, redis_prefix)
    if database.dialect == "postgresql":
        return PostgresStore(database.engine)
    return LocalStore()


def retry_after(wait: float) -> int:
    """A wait in whole seconds for the Retry-After header (at least 1)."""
    return max(1, math.ceil(wait)) if math.isfinite(wait) else 3600


