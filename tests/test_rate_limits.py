"""Limits that hold across processes (issue 15, item 5): shared token buckets in Redis and
PostgreSQL, and a real gunicorn with 3 workers answering 429 whichever worker a request meets.

Redis is the machine's own (127.0.0.1:6379); these tests use DB 15 and a key prefix of their
own, and delete their keys afterwards.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
import redis
import requests

from api.buckets import Bucket, LocalStore, PostgresStore, RedisStore
from kernel.db import Database
from metering.models import Provider
from tests.conftest import new_key
from tests.factories import make_uscc, record
from tests.server import Server

REDIS_DB_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_prefix():
    prefix = f"voucher-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_DB_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["local", "redis", "postgresql"])
def store(request, redis_prefix):
    if request.param == "local":
        yield LocalStore()
    elif request.param == "redis":
        yield RedisStore(redis.Redis.from_url(REDIS_DB_URL), redis_prefix)
    else:
        pg = request.getfixturevalue("pg")
        yield PostgresStore(pg.db.engine)


def test_a_bucket_admits_its_burst_then_its_rate(store):
    bucket, t = Bucket(rate=2, burst=3), 1_800_000_000.0
    assert [store.take("k", bucket, 1, t) for _ in range(3)] == [0, 0, 0]
    assert store.take("k", bucket, 1, t) == pytest.approx(0.5)  # refused: nothing taken
    assert store.take("other", bucket, 1, t) == 0  # one bucket per key
    assert store.take("k", bucket, 1, t + 0.5) == 0
    assert store.take("k", bucket, 2, t + 1.0) == pytest.approx(0.5)  # 1 token back, 2 asked
    assert store.take("k", bucket, 1, t + 100) == 0  # never more than the burst
    assert store.take("k", bucket, 3, t + 100) == pytest.approx(0.5)
    assert store.take("big", bucket, 50, t) == 0  # a cost over the burst costs the whole burst
    assert store.take("big", bucket, 1, t) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_concurrent_takes_never_overspend_a_shared_bucket(kind, request, redis_prefix):
    if kind == "redis":
        stores = [RedisStore(redis.Redis.from_url(REDIS_DB_URL), redis_prefix) for _ in range(4)]
    else:
        url = request.getfixturevalue("pg").url
        databases = [Database(url) for _ in range(4)]  # four engines, as four workers have
        stores = [PostgresStore(d.engine) for d in databases]
    bucket, t = Bucket(rate=0.001, burst=25), 1_800_000_000.0
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda i: stores[i % 4].take("shared", bucket, 1, t), range(80)))
    assert sum(1 for w in waits if w == 0) == 25
    if kind == "postgresql":
        for d in databases:
            d.dispose()


# --- a real gunicorn with 3 workers -----------------------------------------------------------
PROVIDER = "prov-limits"
LIMITS = {"VOUCHER_AUTH_FAIL_LIMIT": "5", "VOUCHER_AUTH_FAIL_WINDOW": "3600",
          "VOUCHER_PUSH_REQUESTS_PER_SECOND": "0.001", "VOUCHER_PUSH_REQUESTS_BURST": "4",
          "VOUCHER_PUSH_RECORDS_PER_SECOND": "0.001", "VOUCHER_PUSH_RECORDS_BURST": "10"}


def seed_provider(db) -> str:
    with db.session() as session, session.begin():
        session.add(Provider(id=PROVIDER, name="Limits DC", kind="intelligent_computing",
                             county="南湖区", listed_from=date(2025, 5, 13)))
    return new_key(db, "provider", PROVIDER)


def test_limits_hold_across_three_gunicorn_workers_with_redis(db, database_url, redis_prefix,
                                                               tmp_path):
    env = {**LIMITS, "VOUCHER_REDIS_URL": REDIS_DB_URL, "VOUCHER_REDIS_PREFIX": redis_prefix}
    check_limits_across_workers(db, database_url, env, tmp_path)


def test_limits_hold_across_three_gunicorn_workers_with_postgresql_alone(pg, tmp_path):
    check_limits_across_workers(pg.db, pg.url, {**LIMITS, "VOUCHER_REDIS_URL": ""}, tmp_path)


def check_limits_across_workers(db, url: str, env: dict[str, str], tmp_path) -> None:
    key = seed_provider(db)
    with Server(url, workers=3, env=env, log_path=tmp_path / "gunicorn.log") as server:
        def call(method, path, bearer, **kw):
            # A new connection each time, so the three workers all take some.
            return requests.request(method, f"{server.url}{path}", timeout=30, **kw, headers={
                "Authorization": f"Bearer {bearer}", "Connection": "close"})

        def push(n, start):
            return call("POST", "/v1/usage-records", key,
                        json={"records": [record(start + i, make_uscc(1)) for i in range(n)]})

        # Buckets: 4 requests, 10 records, refilled so slowly that nothing comes back here.
        assert push(6, 0).status_code == 200
        over = push(6, 100)  # 6 records, 4 left: refused, nothing stored
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert int(over.headers["Retry-After"]) >= 1
        assert [push(1, 200 + i).status_code for i in range(3)] == [200, 200, 429]  # requests

        # Then guesses from the same address (which end with it refused, right key or not).
        with ThreadPoolExecutor(3) as pool:
            guesses = list(pool.map(lambda n: call("GET", "/v1/providers", f"vch_{n:016x}_guess"),
                                    range(30)))
        statuses = sorted(r.status_code for r in guesses)
        assert statuses == [401] * 5 + [429] * 25, statuses  # 5 per address, not 5 per worker
        refused = next(r for r in guesses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 0 < int(refused.headers["Retry-After"]) <= 3600


def test_pushes_have_documented_default_limits_per_key(db, settings):
    from config.settings import Settings
    from voucher.app import create_app

    shipped = Settings.from_env(env={})
    assert (shipped.push_requests_per_second, shipped.push_requests_burst) == (10, 20)
    assert (shipped.push_records_per_second, shipped.push_records_burst) == (1000, 5000)
    assert shipped.push_records_burst >= shipped.max_batch_records  # a full batch always fits
    app = create_app(settings.with_(push_requests_per_second=10, push_requests_burst=20,
                                    push_records_per_second=1000, push_records_burst=5000),
                     database=db)
    client, key = app.test_client(), seed_provider(db)
    other_key = new_key(db, "provider", PROVIDER)  # the same provider, another key
    headers = {"Authorization": f"Bearer {key}"}
    batch = {"records": [record(i, make_uscc(1)) for i in range(5000)]}
    assert client.post("/v1/usage-records", json=batch, headers=headers).status_code == 200
    r = client.post("/v1/usage-records", json=batch, headers=headers)  # 10,000 records at once
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 5
    assert client.post("/v1/usage-records", json={"records": batch["records"][:10]},
                       headers={"Authorization": f"Bearer {other_key}"}).status_code == 200
