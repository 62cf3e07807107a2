"""Authentication hardening: constant-time keys, a failure limit, body limits, no key in a log."""

from __future__ import annotations

import hmac
import logging
import re

import requests

from api.ratelimit import FailureLimiter
from kernel import keys as keys_mod
from kernel.keys import authenticate
from tests.conftest import Api, new_key
from tests.factories import make_uscc, record, setup_programme
from tests.server import Server
from voucher.app import create_app

U0 = make_uscc(100)  # the first enterprise setup_programme registers
KEY_RE = re.compile(r"vch_[0-9a-f]{16}_[A-Za-z0-9_-]{16,}")


# --- constant time ----------------------------------------------------------------------------

def test_every_key_costs_one_hash_and_one_constant_time_comparison(db, monkeypatch):
    """Unknown id, wrong secret, revoked key, right key: the same work, so timing tells nothing."""
    good = new_key(db, "finance")
    revoked = new_key(db, "finance")
    with db.session() as s, s.begin():
        keys_mod.revoke_key(s, keys_mod.parse_key(revoked)[0])
    key_id = good.split("_")[1]
    calls: list[tuple[str, int, int]] = []
    real_compare, real_hash = hmac.compare_digest, keys_mod._hash

    def compare(a, b):
        calls.append(("compare", len(a), len(b)))
        return real_compare(a, b)

    def hash_(secret):
        calls.append(("hash", 0, 0))
        return real_hash(secret)

    monkeypatch.setattr(keys_mod.hmac, "compare_digest", compare)
    monkeypatch.setattr(keys_mod, "_hash", hash_)
    cases = {
        "unknown id": f"vch_{'0' * 16}_{good.split('_', 2)[2]}",
        "wrong secret": f"vch_{key_id}_{'A' * 43}",
        "revoked": revoked,
        "right": good,
    }
    work = {}
    with db.session() as s:
        for name, plain in cases.items():
            calls.clear()
            principal = authenticate(s, plain)
            assert (principal is not None) == (name == "right"), name
            work[name] = list(calls)
    assert all(w == [("hash", 0, 0), ("compare", 64, 64)] for w in work.values()), work


# --- failed authentications -------------------------------------------------------------------

def test_failures_are_a_token_bucket_per_address():
    now = [1000.0]
    limiter = FailureLimiter(limit=3, window=60, clock=lambda: now[0])  # 3 failures, 1 per 20 s back
    for _ in range(3):
        assert limiter.retry_after("a") is None
        assert limiter.failed("a") is None  # answered 401
    assert limiter.failed("a") == 20  # one too many: 429 until a token is back
    assert limiter.retry_after("a") == 20  # and this process refuses the address meanwhile
    assert limiter.retry_after("b") is None
    now[0] += 20
    assert limiter.retry_after("a") is None
    assert limiter.failed("a") is None  # the token that came back
    assert limiter.failed("a") == 20
    assert FailureLimiter(limit=0, window=60).retry_after("a") is None  # 0 switches it off
    assert FailureLimiter(limit=0, window=60).failed("a") is None


def test_repeated_failures_from_one_address_get_429(db, settings):
    app = create_app(settings.with_(auth_fail_limit=3, auth_fail_window=60), database=db)
    client = app.test_client()
    good = new_key(db, "finance")

    def get(key, addr="10.1.1.1"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return client.get("/v1/providers", headers=headers, environ_base={"REMOTE_ADDR": addr})

    assert get(good).status_code == 200  # successes are not counted
    for n in range(3):
        assert get(f"vch_{n:016x}_guess").status_code == 401
    r = get("vch_0000000000000009_guess")
    assert r.status_code == 429
    assert r.json["error"]["type"] == "rate_limit_error" and r.json["error"]["code"] == "rate_limited"
    assert 0 < int(r.headers["Retry-After"]) <= 60
    # While blocked, even the right key is not looked at: guessing learns nothing.
    assert get(good).status_code == 429
    assert get(None).status_code == 401  # no key, no guess: not limited
    assert get(good, addr="10.1.1.2").status_code == 200  # per address


def test_limit_comes_from_the_environment():
    from config.settings import Settings

    s = Settings.from_env(env={"VOUCHER_AUTH_FAIL_LIMIT": "7", "VOUCHER_AUTH_FAIL_WINDOW": "30"})
    assert (s.auth_fail_limit, s.auth_fail_window) == (7, 30)


# --- request size -----------------------------------------------------------------------------

def test_body_over_the_configured_limit_is_413_before_any_parsing(db, settings):
    app = create_app(settings.with_(max_content_length=4096), database=db)
    client = app.test_client()
    finance = Api(client, new_key(db, "finance"))
    setup_programme(finance, providers=("prov-a",), enterprises=1)
    provider = Api(client, new_key(db, "provider", "prov-a"))
    big = {"records": [record(i, U0) for i in range(40)]}
    r = provider.post("/v1/usage-records", json=big)
    assert r.status_code == 413 and r.json["error"]["code"] == "request_too_large"
    small = {"records": [record(0, U0)]}
    r = provider.post("/v1/usage-records", json=small)
    assert r.status_code == 200 and r.json["accepted"] == 1


# --- keys in logs, and the same rules on a real server ----------------------------------------

def test_a_real_server_never_logs_a_key(pg, tmp_path):
    """gunicorn with debug logging, keys issued, used, mistyped and revoked: none in the log."""
    setup_programme(pg.finance, providers=("prov-a",), enterprises=1)
    log_path = tmp_path / "server.log"
    env = {"VOUCHER_LOG_LEVEL": "debug", "VOUCHER_AUTH_FAIL_LIMIT": "5",
           "VOUCHER_AUTH_FAIL_WINDOW": "60"}
    issued: list[str] = [pg.finance.key]
    with Server(pg.url, workers=1, env=env, log_path=log_path) as server:
        url = server.url

        def call(method, path, key, **kw):
            return requests.request(method, url + path, headers={"Authorization": f"Bearer {key}"},
                                    timeout=30, **kw)

        r = call("POST", "/v1/api-keys", pg.finance.key, json={"role": "provider", "subject": "prov-a"})
        assert r.status_code == 201
        provider_key, provider_id = r.json()["key"], r.json()["id"]
        issued.append(provider_key)
        r = call("POST", "/v1/usage-records", provider_key,
                 json={"records": [record(1, U0), {"record_id": "bad"}]})
        assert r.status_code == 200 and r.json()["rejected"] == 1
        assert call("GET", "/v1/usage-records/nope", provider_key).status_code == 404
        # Bodies past the limit are refused even without a Content-Length (chunked).
        chunks = (b"x" * 65536 for _ in range(600))  # ~39 MB
        r = requests.post(url + "/v1/usage-records", data=chunks, timeout=60,
                          headers={"Authorization": f"Bearer {provider_key}",
                                   "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert call("DELETE", f"/v1/api-keys/{provider_id}", pg.finance.key).status_code == 200
        assert call("GET", "/v1/usage-records", provider_key).status_code == 401  # revoked
        # A typo of a real key is a near-key; it must not be written down either.
        typo = provider_key[:-1] + ("A" if provider_key[-1] != "A" else "B")
        issued.append(typo)
        statuses = [call("GET", "/v1/providers", typo).status_code for _ in range(6)]
        assert statuses[:4] == [401] * 4 and statuses[-1] == 429, statuses
        limited = call("GET", "/v1/providers", pg.finance.key)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    text = log_path.read_text()
    assert provider_id in text, "the request log names key ids; it should have run"
    secrets_ = [k.split("_", 2)[2] for k in issued]
    leaked = [k for k in issued + secrets_ if k in text]
    assert not leaked and not KEY_RE.search(text), "a key was written to the server log"


def test_python_logging_is_watched_for_keys(no_key_in_logs):
    """The session-wide watch in conftest does see records, and would see a key in one."""
    from tests.conftest import KeyLeakWatch

    assert no_key_in_logs in logging.getLogger().handlers
    watch = KeyLeakWatch()
    log = logging.getLogger("voucher.test.leak")
    log.addHandler(watch)
    log.propagate = False  # the session-wide watch must not count this planted key
    try:
        log.warning("auth for %s", "vch_0123456789abcdef_" + "k" * 43)
        log.warning("no key here: key_0123456789abcdef")
    finally:
        log.removeHandler(watch)
        log.propagate = True
    assert len(watch.leaks) == 1 and watch.seen == 2


# --- console headers --------------------------------------------------------------------------

def test_console_pages_carry_security_headers(app, client):
    console = [r for r in app.url_map.iter_rules() if r.rule.startswith("/console")]
    if not console:
        assert client.get("/console/sign-in").status_code == 404
        return
    paths = ["/console/sign-in", "/console/", "/console/no-such-page"]
    statics = [r for r in console if r.endpoint.endswith(".static")]
    if statics:
        paths.append("/console/static/console.css")
    for path in paths:
        r = client.get(path)
        assert r.status_code < 500, path
        h = r.headers
        assert "default-src 'none'" in h.get("Content-Security-Policy", ""), path
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"], path
        assert h.get("X-Frame-Options") == "DENY", path
        assert h.get("X-Content-Type-Options") == "nosniff", path


def test_wrong_console_sign_ins_share_the_failure_limit(app, client, db):
    """The console's sign-in form counts against the same per-address limit as the API."""
    if not any(r.rule == "/console/sign-in" for r in app.url_map.iter_rules()):
        assert client.get("/console/sign-in").status_code == 404
        return
    limit = app.config["VOUCHER_SETTINGS"].auth_fail_limit
    statuses = []
    for n in range(limit + 1):
        page = client.get("/console/sign-in").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = client.post("/console/sign-in", data={"api_key": f"vch_{n:016x}_guess", "csrf_token": token})
        statuses.append(r.status_code)
    assert statuses == [401] * limit + [429], statuses
    r = client.get("/v1/providers", headers={"Authorization": f"Bearer {new_key(db, 'finance')}"})
    assert r.status_code == 429 and r.headers["Retry-After"]


# --- headers of every answer; gunicorn's own refusals as the error body ------------------------

def test_json_answers_say_nosniff_and_docs_carry_the_console_headers(client, finance):
    for r in (client.get("/healthz"), client.get("/v1/providers"), finance.get("/v1/providers"),
              finance.get("/v1/no-such-thing"), client.get("/openapi.json"),
              finance.post("/v1/providers", data="{", headers={"Content-Type": "application/json"})):
        assert r.mimetype == "application/json" and r.headers["X-Content-Type-Options"] == "nosniff"
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"
    csp = docs.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert "unsafe-inline" not in csp and "style=" not in docs.get_data(as_text=True)
    assert docs.headers["X-Frame-Options"] == "DENY"
    assert docs.headers["X-Content-Type-Options"] == "nosniff"
    assert docs.headers["Referrer-Policy"] == "no-referrer"
    # The one inline stylesheet is the one the CSP allows by its hash.
    import base64
    import hashlib

    css = re.search(r"<style>(.*?)</style>", docs.get_data(as_text=True), re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp


def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_gunicorn_refusals_are_the_json_error_body(db, database_url, tmp_path):
    import json

    with Server(database_url, workers=1, log_path=tmp_path / "server.log") as server:
        long_line = b"GET /v1/providers?x=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        big_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
        many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n"
        garbage = b"NOT A REQUEST\r\n\r\n"
        for request, status, code in ((long_line, 414, "request_line_too_long"),
                                      (big_header, 431, "request_headers_too_large"),
                                      (many, 431, "request_headers_too_large"),
                                      (garbage, 400, "bad_request")):
            got, headers, body = _raw(server.url, request)
            assert got == status, (got, body[:200])
            assert headers["Content-Type"] == "application/json", headers
            assert headers["X-Content-Type-Options"] == "nosniff"
            error = json.loads(body)["error"]
            assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
        # Just under the limits the app answers as usual.
        ok = requests.get(server.url + "/healthz", headers={"X-Big": "b" * 8000}, timeout=10)
        assert ok.status_code == 200 and ok.headers["X-Content-Type-Options"] == "nosniff"
        r = requests.get(server.url + "/v1/providers?x=" + "a" * 3900, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
