"""The quota read's fast path (api/fastpath.py) answers exactly as the Flask route does.

Every request is sent twice, once with the fast path on and once with it off (the Flask route
alone), and the two answers must be equal: status, body bytes and headers (the request id
aside when the client sent none). The common answers must come from the fast path (the Flask
app is not called), every other answer from the route. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest
from prometheus_client import REGISTRY

from api.fastpath import QuotaFastPath
from config.settings import Settings
from kernel.keys import revoke_key
from metering.models import ModelFiling
from tests.conftest import NO_PUSH_LIMITS, Api, new_key
from tests.factories import claim, invoice, make_uscc, setup_programme, usage
from voucher.app import create_app

ROUTE = "/v1/enterprises/<uscc>/quota"


class Counting:
    """The Flask app behind the fast path, counting the requests it is given."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.inner(environ, start_response)


@pytest.fixture
def fast(app) -> tuple[QuotaFastPath, Counting]:
    middleware = app.wsgi_app
    assert isinstance(middleware, QuotaFastPath)
    middleware.wsgi_app = counting = Counting(middleware.wsgi_app)
    return middleware, counting


def _both(fast, api: Api, url: str, **headers):
    """(fast path answer, Flask route answer, whether the Flask app answered the first)."""
    middleware, counting = fast
    before = counting.calls
    on = api.get(url, headers=headers)
    by_flask = counting.calls > before
    middleware.enabled = False
    try:
        off = api.get(url, headers=headers)
    finally:
        middleware.enabled = True
    return on, off, by_flask


def _same(on, off, request_id_sent: bool) -> None:
    assert (on.status_code, on.data) == (off.status_code, off.data)
    h_on, h_off = dict(on.headers), dict(off.headers)
    if not request_id_sent:
        assert len(h_on.pop("X-Request-Id")) == len(h_off.pop("X-Request-Id")) == 32
    assert h_on == h_off


@pytest.fixture
def programme(client, db, finance):
    _providers, usccs = setup_programme(finance, enterprises=3)
    u0, u1, u2 = usccs
    provider = Api(client, new_key(db, "provider", "prov-a"))
    usage(provider, u0, 1_000_000)
    invoice(provider, "INV-1", u0, 1_000_000)
    claim(Api(client, new_key(db, "enterprise", u0)), [("prov-a", "INV-1", 1_000_000)])
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    with db.session() as session, session.begin():  # u1 filed a model in 2026: the higher cap
        session.add(ModelFiling(enterprise_uscc=u1, filing_no="ZJ-2026-1", model_name="模型",
                                obtained_on=date(2026, 3, 1)))
    return usccs


def test_the_common_answers_come_from_the_fast_path_and_equal_the_route(client, db, finance, fast, programme):
    u0, u1, u2 = programme
    cases = [
        (Api(client, new_key(db, "enterprise", u0)), f"/v1/enterprises/{u0}/quota?year=2026"),  # a balance row
        (Api(client, new_key(db, "enterprise", u1)), f"/v1/enterprises/{u1}/quota?year=2026"),  # filed, no row
        (Api(client, new_key(db, "enterprise", u2)), f"/v1/enterprises/{u2}/quota?year=2027"),
        (Api(client, new_key(db, "enterprise", u2)), f"/v1/enterprises/{u2}/quota?year=2024"),  # outside
        (Api(client, new_key(db, "enterprise", u2)), f"/v1/enterprises/{u2}/quota"),  # the current year
        (finance, f"/v1/enterprises/{u0}/quota?year=2026"),
    ]
    for api, url in cases:
        on, off, by_flask = _both(fast, api, url)
        assert on.status_code == 200, (url, on.json)
        assert not by_flask, url
        _same(on, off, request_id_sent=False)
    on, off, by_flask = _both(fast, finance, f"/v1/enterprises/{u0}/quota?year=2026", **{"X-Request-Id": "abc.1"})
    assert not by_flask and on.headers["X-Request-Id"] == "abc.1"
    _same(on, off, request_id_sent=True)
    assert on.json["reserved"] == 500_000 and on.json["cap_basis"] == "standard"
    filed = _both(fast, finance, f"/v1/enterprises/{u1}/quota?year=2026")[0].json
    assert (filed["cap_basis"], filed["cap"], filed["reserved"]) == ("new_model_filing", 500_000_000, 0)
    current = _both(fast, finance, f"/v1/enterprises/{u2}/quota")[0].json
    assert current["year"] == datetime.now(UTC).year  # Asia/Shanghai's year but on 31 Dec 16:00+ UTC
    outside = _both(fast, finance, f"/v1/enterprises/{u2}/quota?year=2024")[0].json
    assert (outside["cap"], outside["cap_basis"]) == (0, "outside_policy_window")


def test_every_other_request_is_answered_by_the_route(app, client, db, finance, fast, programme):
    u0, u1, _u2 = programme
    policy_id = app.extensions["voucher.policy"].id
    own = Api(client, new_key(db, "enterprise", u0))
    revoked_key = new_key(db, "enterprise", u0)
    with db.session() as session, session.begin():
        revoke_key(session, "key_" + revoked_key.split("_")[1])
    unknown = make_uscc(9999)
    cases = [
        (own, f"/v1/enterprises/{u1}/quota?year=2026", {}, 404),  # another enterprise's
        (finance, f"/v1/enterprises/{unknown}/quota?year=2026", {}, 404),  # not registered
        (Api(client, "vk_0123456789abcdef_nope"), f"/v1/enterprises/{u0}/quota?year=2026", {}, 401),
        (Api(client, revoked_key), f"/v1/enterprises/{u0}/quota?year=2026", {}, 401),
        (Api(client, None), f"/v1/enterprises/{u0}/quota?year=2026", {}, 401),
        (Api(client, new_key(db, "provider", "prov-a")), f"/v1/enterprises/{u0}/quota?year=2026", {}, 403),
        (own, f"/v1/enterprises/{u0}/quota?year=1999", {}, 400),
        (own, f"/v1/enterprises/{u0}/quota?year=２０２６", {}, 400),  # full-width digits
        (own, f"/v1/enterprises/{u0}/quota?year=abc", {}, 400),
        (own, f"/v1/enterprises/{u0}/quota?year=2026&program={policy_id}", {}, 200),
        (own, f"/v1/enterprises/{u0}/quota?year=2026&program=nope", {}, 404),
        (own, f"/v1/enterprises/{u0.lower()}/quota?year=2026", {}, 200),  # canonicalised by the route
        (own, f"/v1/enterprises/{u0}/quota/?year=2026", {}, 200),
    ]
    for api, url, headers, status in cases:
        on, off, by_flask = _both(fast, api, url, **{"X-Request-Id": "same", **headers})
        assert by_flask, url
        assert on.status_code == status, (url, on.json)
        _same(on, off, request_id_sent=True)
    client.set_cookie("session", "x")  # a browser's request: Flask's sessions see it
    on, off, by_flask = _both(fast, own, f"/v1/enterprises/{u0}/quota?year=2026", **{"X-Request-Id": "same"})
    assert by_flask and on.status_code == 200
    _same(on, off, request_id_sent=True)


def test_a_blocked_address_is_refused_before_any_answer(db, database_url, programme):
    """Failed keys are counted once (by the route); once the address is blocked even a valid
    key is refused there, as on every route."""
    u0 = programme[0]
    settings = Settings.from_env(env={}, database_url=database_url, auth_fail_limit=3, **NO_PUSH_LIMITS)
    client = create_app(settings, database=db).test_client()
    good = Api(client, new_key(db, "enterprise", u0))
    url = f"/v1/enterprises/{u0}/quota?year=2026"
    assert good.get(url).status_code == 200
    bad = Api(client, "vk_0123456789abcdef_nope")
    assert [bad.get(url).status_code for _ in range(4)] == [401, 401, 401, 429]
    assert good.get(url).status_code == 429


def _http_count(status: str = "200") -> float:
    return REGISTRY.get_sample_value("voucher_http_requests_total",
                                     {"route": ROUTE, "method": "GET", "status": status}) or 0.0


def test_metrics_and_the_log_line_are_the_routes(client, db, fast, programme, caplog):
    u0 = programme[0]
    api = Api(client, new_key(db, "enterprise", u0))
    url = f"/v1/enterprises/{u0}/quota?year=2026"
    middleware, counting = fast
    lines = []
    for enabled in (True, False):
        middleware.enabled = enabled
        before = _http_count()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="voucher.request"):
            assert api.get(url, headers={"X-Request-Id": "r1"}).status_code == 200
        assert _http_count() == before + 1
        (line,) = [r for r in caplog.records if r.name == "voucher.request"]
        lines.append({k: getattr(line, k) for k in ("request_id", "route", "method", "path", "status",
                                                     "key_id", "remote", "levelno")}
                     | {"message": line.getMessage(), "timed": line.duration_ms is not None})
    middleware.enabled = True
    assert lines[0] == lines[1]
    assert lines[0]["route"] == ROUTE and lines[0]["key_id"].startswith("key_")
