"""The quota read's fast path (api/fastpath.py) answers exactly as the Flask route does.

Every request is sent twice, once with the fast path on and once with it off (the Flask route
alone), and the two answers must be equal: status, body bytes and headers (the request id
aside when the client sent none). The common answers must come from the fast path (the Flask
app is not called), every other answer from the route. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import DBAPIError

from api.fastpath import FastPaths
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
def fast(app) -> tuple[FastPaths, Counting]:
    middleware = app.wsgi_app
    assert isinstance(middleware, FastPaths)
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


# --- POST /v1/redemptions (PostgreSQL: voucher_hold, migration 0019) -------------------------------

P = "2026-02"


def _authorise(api: Api, uscc: str, ref: str, amount: int, period: str = P, **headers):
    return api.post("/v1/redemptions", json={"enterprise_uscc": uscc, "reference": ref, "list_amount": amount,
                                             "period": period}, headers=headers)


def _rows(db, ref: str) -> dict:
    """What an authorisation wrote, with its own ids, times and names masked."""
    from sqlalchemy import text

    with db.session() as s:
        r = s.execute(text("SELECT * FROM redemption WHERE reference = :r"), {"r": ref}).mappings().one()
        rid = r["id"]
        postings = s.execute(text("SELECT account, amount, kind, claim_id, policy_id, reason, programme_id, "
                                  "count(*) OVER (PARTITION BY entry_id) AS legs FROM ledger_posting "
                                  "WHERE redemption_id = :i ORDER BY amount"), {"i": rid}).mappings().all()
        entry = s.execute(text("SELECT * FROM audit_event WHERE object_id = :o"), {"o": f"rdm_{rid}"}).mappings().one()
        event = s.execute(text("SELECT * FROM event WHERE object_id = :o"), {"o": f"rdm_{rid}"}).mappings().one()
        deliveries = s.execute(text("SELECT endpoint_id, status, attempts FROM webhook_delivery WHERE event_id = :e "
                                    "ORDER BY endpoint_id"), {"e": event["id"]}).all()
        key = {"u": r["enterprise_uscc"], "y": r["year"]}
        balance = s.execute(text("SELECT cap, cap_basis, reserved, granted, policy_id, programme_id FROM quota_balance "
                                 "WHERE enterprise_uscc = :u AND year = :y"), key).mappings().one()
        caps = s.execute(text("SELECT account, amount, kind, reason, programme_id FROM ledger_posting WHERE "
                              "enterprise_uscc = :u AND year = :y AND kind IN ('open', 'cap_change') "
                              "ORDER BY id"), key).mappings().all()
    mask = {r["enterprise_uscc"]: "USCC", ref: "REF", f"rdm_{rid}": "rdm_ID"}

    def masked(value):
        text_ = json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
        for old, new in mask.items():
            text_ = text_.replace(old, new)
        return json.loads(text_)

    redemption = {k: v for k, v in r.items() if k not in ("id", "created_at", "expires_at")}
    return masked({
        "redemption": redemption | {"hold_days": (r["expires_at"] - r["created_at"]).days},
        "postings": [dict(p) for p in postings],
        "audit": {k: entry[k] for k in ("actor_role", "request_id", "action", "object_type", "object_id",
                                        "before", "after")} | {"key": entry["actor_key_id"] is not None},
        "event": {k: event[k] for k in ("type", "object_type", "object_id", "enterprise_uscc", "provider_id")}
                 | {"object": {k: v for k, v in event["data"]["object"].items()
                               if k not in ("created_at", "expires_at")}, "at_entry": event["created"] == entry["at"]},
        "deliveries": [list(d) for d in deliveries],
        "balance": dict(balance), "cap_postings": [dict(c) for c in caps],
    })


@pytest.fixture
def holds(pg):
    from tests.test_webhooks import register

    middleware = pg.app.wsgi_app
    middleware.wsgi_app = counting = Counting(middleware.wsgi_app)
    _, usccs = setup_programme(pg.finance, providers=("prov-a", "prov-b"), enterprises=3)
    provider = pg.as_key("provider", "prov-a")
    register(pg.finance, "http://127.0.0.1:9/all")  # wants every event
    register(pg.as_key("provider", "prov-a"), "http://127.0.0.1:9/a", ["redemption.authorized"])
    register(pg.as_key("provider", "prov-b"), "http://127.0.0.1:9/b")  # may not see prov-a's
    register(pg.finance, "http://127.0.0.1:9/claims", ["claim.verified"])  # does not want it
    for uscc in usccs:  # each enterprise's first hold of the year opens its balance row: the route
        assert _authorise(provider, uscc, f"first-{uscc}", 1_000).status_code == 201
    return pg, middleware, counting, provider, usccs


def _twins(holds, fast_uscc: str, slow_uscc: str, ref: str, amount: int, period: str = P):
    """The same authorisation for two enterprises in the same state: one by the fast path, one
    by the route; their answers and rows must be equal but for ids, times and names."""
    pg, middleware, counting, provider, _usccs = holds
    before = counting.calls
    fast = _authorise(provider, fast_uscc, f"{ref}-fast", amount, period, **{"X-Request-Id": "req-7"})
    assert fast.status_code == 201, fast.json
    assert counting.calls == before  # answered by the fast path
    middleware.enabled = False
    try:
        slow = _authorise(provider, slow_uscc, f"{ref}-slow", amount, period, **{"X-Request-Id": "req-7"})
    finally:
        middleware.enabled = True
    assert slow.status_code == 201 and counting.calls == before + 1
    masked = {"id", "created_at", "expires_at", "enterprise_uscc", "reference"}
    assert {k: v for k, v in fast.json.items() if k not in masked} == \
        {k: v for k, v in slow.json.items() if k not in masked}
    assert {k for k in fast.headers.keys()} == {k for k in slow.headers.keys()}
    assert fast.headers["X-Request-Id"] == "req-7"
    rows = _rows(pg.db, f"{ref}-fast")
    assert rows == _rows(pg.db, f"{ref}-slow")
    return fast, rows


def test_an_authorisation_from_the_fast_path_writes_what_the_route_writes(holds):
    pg, middleware, counting, provider, (u0, u1, _u2) = holds
    fast, rows = _twins(holds, u0, u1, "order-7", 1_000_001)
    assert fast.json["subsidy"] == 500_001 and fast.json["held"] == 500_001
    assert len(rows["deliveries"]) == 2  # finance's and prov-a's endpoints
    quota = pg.finance.get(f"/v1/enterprises/{u0}/quota?year=2026").json
    assert quota["reserved"] == 500 + 500_001
    # the first hold of a year opens the balance row (a new period's row too); a model filing
    # since the last hold raises the cap: both as the route does them
    first, rows = _twins(holds, u0, u1, "order-2027", 3_000, "2027-01")
    assert rows["cap_postings"][-1]["kind"] == "open" and rows["balance"]["cap"] == 200_000_000
    for uscc in (u0, u1):
        with pg.db.session() as s, s.begin():
            s.add(ModelFiling(enterprise_uscc=uscc, filing_no=f"ZJ-{uscc}", model_name="模型",
                              obtained_on=date(2026, 4, 1)))
    raised, rows = _twins(holds, u0, u1, "order-filed", 4_000)
    assert rows["cap_postings"][-1]["kind"] == "cap_change" and rows["balance"]["cap_basis"] == "new_model_filing"
    event = [e for e in provider.get("/v1/events?limit=1000").json["data"]
             if e["data"]["object"]["id"] == fast.json["id"]]
    assert event[0]["data"]["object"] == provider.get(f"/v1/redemptions/{fast.json['id']}").json
    with pg.db.session() as s:
        from billing import ledger
        from kernel.audit import verify_chain

        assert ledger.verify(s).ok and verify_chain(s).ok


def test_every_other_authorisation_is_answered_by_the_route(holds):
    pg, middleware, counting, provider, (u0, u1, u2) = holds
    assert _authorise(provider, u0, "order-1", 2_000).status_code == 201
    with pg.db.session() as s, s.begin():
        from sqlalchemy import text

        s.execute(text("UPDATE quota_balance SET reserved = cap - 100 WHERE enterprise_uscc = :u"), {"u": u2})
        s.execute(text("UPDATE enterprise SET eligible = false WHERE uscc = :u"), {"u": u1})
    cases = [
        (provider, u0, "order-1", 2_000, P, 200),  # a replay
        (provider, u0, "order-1", 2_002, P, 409),  # another request under the reference
        (provider, u2, "order-2", 1_000, P, 201),  # the quota is short: a partial hold (crosses 100 %)
        (provider, u2, "order-3", 1_000, P, 422),  # nothing left
        (provider, u1, "order-4", 1_000, P, 422),  # not eligible
        (provider, u0, "order-5", 1_000, "2024-01", 422),  # outside the window
        (pg.finance, u0, "order-9", 1_000, P, 403),
        (Api(pg.client, "vch_0123456789abcdef_nope"), u0, "order-10", 1_000, P, 401),
    ]
    for api, uscc, ref, amount, period, status in cases:
        before = counting.calls
        r = _authorise(api, uscc, ref, amount, period)
        assert counting.calls == before + 1, ref
        assert r.status_code == status, (ref, r.json)
    before = counting.calls
    r = _authorise(provider, u0, "order-11", 1_000, **{"Idempotency-Key": "k1"})
    assert r.status_code == 201 and counting.calls == before + 1


def test_a_balance_that_moved_since_the_read_refuses_and_writes_nothing(holds):
    from sqlalchemy import text

    pg, middleware, _counting, provider, (u0, _u1, _u2) = holds
    r = _authorise(provider, u0, "order-1", 2_000)
    with pg.db.session() as s:
        counts = [s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in
                  ("redemption", "ledger_posting", "audit_event", "event", "webhook_delivery")]
        reserved = s.execute(text("SELECT reserved FROM quota_balance WHERE enterprise_uscc = :u"), {"u": u0}).scalar()
    from api.hotread import hot_reads
    from billing.redemptions import HoldFigures, hold_arguments, plan_hold
    from kernel.audit import Actor

    policy = pg.app.extensions["voucher.policy"]
    stale = HoldFigures(True, True, "open", False, 200_000_000, 200_000_000, "standard", reserved - 1, 0)
    plan = plan_hold(policy, "prov-a", u0, "order-stale", 2_000, P, stale, 10_000, datetime.now(UTC))
    args = hold_arguments(policy, plan, Actor("provider", "key_x", "req"), '{"id": "rdm_10000"}', [],
                          datetime.now(UTC))
    with pytest.raises(DBAPIError, match="the balance moved"):
        hot_reads(pg.db).first(middleware.hold_call, args)
    # the reference taken since the read: the hold is undone
    taken = plan_hold(policy, "prov-a", u0, "order-1", 2_000, P,
                      HoldFigures(True, True, "open", False, 200_000_000, 200_000_000, "standard", reserved, 0), 10_001,
                      datetime.now(UTC))
    args = hold_arguments(policy, taken, Actor("provider", "key_x", "req"), '{"id": "rdm_10001"}', [],
                          datetime.now(UTC))
    with pytest.raises(DBAPIError, match="reference order-1 is taken"):
        hot_reads(pg.db).first(middleware.hold_call, args)
    with pg.db.session() as s:
        assert counts == [s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in
                          ("redemption", "ledger_posting", "audit_event", "event", "webhook_delivery")]
        assert reserved == s.execute(text("SELECT reserved FROM quota_balance WHERE enterprise_uscc = :u"),
                                     {"u": u0}).scalar()
    assert r.status_code == 201


def test_a_defect_in_the_fast_path_costs_no_request(app, client, db, fast, programme, monkeypatch, caplog):
    """An unexpected error in the layer is logged and the route answers, as without it."""
    middleware, counting = fast
    u0 = programme[0]
    api = Api(client, new_key(db, "enterprise", u0))

    def broken(_environ):
        raise KeyError("a defect")

    monkeypatch.setattr(middleware, "_quota", broken)
    before = counting.calls
    with caplog.at_level(logging.ERROR, logger="voucher.fastpath"):
        r = api.get(f"/v1/enterprises/{u0}/quota?year=2026")
    assert r.status_code == 200 and r.json["reserved"] == 500_000
    assert counting.calls == before + 1
    assert any("fast path failed" in rec.getMessage() for rec in caplog.records)
