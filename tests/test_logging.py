"""Structured logs: one JSON line per request, request ids in and out, never a key."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import date

import pytest
import requests

from kernel.logging import JsonFormatter, configure_logging
from metering.models import Enterprise, Provider
from tests.conftest import new_key
from tests.factories import make_uscc, record
from tests.server import Server

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def log_lines(app):
    """The app's log, as the JSON lines it writes (the handler create_app installed, re-aimed)."""
    stream = io.StringIO()
    configure_logging(True, stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    configure_logging(True)


def requests_logged(lines):
    return [line for line in lines if line["logger"] == "voucher.request"]


def test_client_request_id_is_returned_and_logged(client, log_lines):
    r = client.get("/healthz", headers={"X-Request-Id": "abc.DEF-1_2"})
    assert r.headers["X-Request-Id"] == "abc.DEF-1_2"
    (line,) = requests_logged(log_lines())
    assert line["request_id"] == "abc.DEF-1_2"


@pytest.mark.parametrize("unsafe", ["has space", "x" * 65, "semi;colon", "ünïcode", ""])
def test_unsafe_request_id_is_replaced_by_a_fresh_one(client, log_lines, unsafe):
    r = client.get("/healthz", headers={"X-Request-Id": unsafe})
    assert r.headers["X-Request-Id"] != unsafe
    assert HEX32.match(r.headers["X-Request-Id"])
    assert requests_logged(log_lines())[0]["request_id"] == r.headers["X-Request-Id"]


def test_every_response_carries_a_request_id_errors_included(client, finance):
    ids = set()
    for resp in [client.get("/healthz"), client.get("/v1/providers"),            # 200, 401
                 finance.get("/v1/providers/none"), client.get("/nowhere"),    # 404, unmatched
                 client.put("/healthz"),                                       # 405
                 finance.post("/v1/providers", json={"id": "x"}),              # 422
                 finance.post("/v1/providers", data="{nope", content_type="application/json")]:
        assert HEX32.match(resp.headers["X-Request-Id"]), resp.status_code
        ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == 7


def test_one_json_line_per_request_with_the_key_id_and_never_the_key(client, db, log_lines, as_key):
    with db.session() as session, session.begin():
        session.add(Provider(id="prov-log", name="P", kind="supercomputing", listed_from=date(2025, 5, 13)))
        session.add(Enterprise(uscc=make_uscc(1), name="E", eligible=True))
    provider = as_key("provider", "prov-log")
    from kernel.keys import authenticate

    with db.session() as session:
        key_id = authenticate(session, provider.key).key_id
    r = provider.post("/v1/usage-records", json={"records": [record(1, make_uscc(1))]},
                      headers={"X-Request-Id": "push-1"})
    assert r.status_code == 200
    bad = client.get("/v1/usage-records", headers={"Authorization": "Bearer vk_not_a_real_key_123"})
    assert bad.status_code == 401

    lines = log_lines()
    logged = requests_logged(lines)
    assert len(logged) == 2
    push, refused = logged
    assert push == {**push, "level": "info", "request_id": "push-1", "route": "/v1/usage-records",
                    "method": "POST", "path": "/v1/usage-records", "status": 200, "key_id": key_id,
                    "remote": "127.0.0.1"}
    assert isinstance(push["duration_ms"], float) and push["duration_ms"] >= 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", push["ts"])
    assert refused["status"] == 401 and "key_id" not in refused
    text = json.dumps(lines)
    assert provider.key not in text and "vk_not_a_real_key_123" not in text
    assert "Bearer" not in text and "Authorization" not in text


def test_lines_logged_while_handling_a_request_carry_its_id(app, log_lines):
    def boom():
        raise RuntimeError("kaput")

    app.add_url_rule("/boom", "boom", boom)
    r = app.test_client().get("/boom", headers={"X-Request-Id": "req-500"})
    assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"
    assert r.headers["X-Request-Id"] == "req-500"
    lines = log_lines()
    error = next(line for line in lines if line["logger"] == "voucher.errors")
    assert error["request_id"] == "req-500" and error["level"] == "error"
    assert "RuntimeError: kaput" in error["exc"]
    (request_line,) = requests_logged(lines)
    assert request_line["status"] == 500 and request_line["level"] == "error"


def test_formatter_writes_one_line_even_for_multiline_messages():
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "two\nlines %s", ("ünï",), None)
    out = JsonFormatter().format(rec)
    assert "\n" not in out
    assert json.loads(out)["message"] == "two\nlines ünï"


def test_gunicorn_writes_only_json_lines_one_per_request(db, database_url, tmp_path):
    with db.session() as session, session.begin():
        session.add(Provider(id="prov-log", name="P", kind="supercomputing", listed_from=date(2025, 5, 13)))
        session.add(Enterprise(uscc=make_uscc(2), name="E", eligible=True))
    key = new_key(db, "provider", "prov-log")
    log_path = tmp_path / "gunicorn.log"
    server = Server(database_url, workers=2, log_path=log_path,
                    env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp")})
    server.start()
    try:
        sent = []
        for i in range(12):
            rid = f"gunicorn-{i}"
            r = requests.post(f"{server.url}/v1/usage-records", timeout=30,
                              json={"records": [record(i, make_uscc(2))]},
                              headers={"Authorization": f"Bearer {key}", "X-Request-Id": rid,
                                       "Connection": "close"})
            assert r.status_code == 200 and r.headers["X-Request-Id"] == rid
            sent.append(rid)
    finally:
        server.stop()
    raw = log_path.read_text()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]  # every line is JSON
    pushes = [line for line in lines if line.get("route") == "/v1/usage-records"]
    assert [line["request_id"] for line in pushes] == sent
    assert {line["logger"] for line in lines} <= {"voucher.request", "gunicorn.error", "voucher.metrics"}
    assert key not in raw


def test_log_level_setting_governs_the_request_line(db, settings):
    from voucher.app import create_app

    quiet = create_app(settings.with_(log_level="warning"))
    assert logging.getLogger().level == logging.WARNING  # create_app applied the setting
    stream = io.StringIO()
    configure_logging(True, level="WARNING", stream=stream)
    try:
        assert quiet.test_client().get("/healthz").status_code == 200
        assert stream.getvalue() == ""  # no line per request at warning
        configure_logging(True, level="INFO", stream=stream)
        assert quiet.test_client().get("/healthz").status_code == 200
        (line,) = requests_logged(json.loads(x) for x in stream.getvalue().splitlines())
        assert line["path"] == "/healthz"
    finally:
        configure_logging(True)


def test_log_level_is_read_from_the_environment_and_checked():
    from config.settings import Settings

    assert Settings.from_env(env={"VOUCHER_LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert Settings.from_env(env={}).log_level == "info"
    with pytest.raises(ValueError, match="VOUCHER_LOG_LEVEL"):
        Settings.from_env(env={"VOUCHER_LOG_LEVEL": "loud"})
