"""Health, readiness, keys, and Stripe-style errors from Flask itself."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.factories import setup_programme


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_unknown_route_and_wrong_method_use_error_envelope(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "resource_missing"
    r = client.put("/healthz")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


def test_body_over_the_size_limit_is_413(client, finance):
    r = finance.post("/v1/providers", data=b"x" * (33 * 1024 * 1024),
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc",
                                    "Bearer vch_0123456789abcdef_wrong"])
def test_missing_or_unknown_key_is_401(client, header):
    headers = {"Authorization": header} if header else {}
    r = client.get("/v1/usage-records", headers=headers)
    assert r.status_code == 401 and r.json["error"]["type"] == "authentication_error"


def test_key_lifecycle(client, finance, db):
    setup_programme(finance, providers=("prov-a",), enterprises=1)
    r = finance.post("/v1/api-keys", json={"role": "provider", "subject": "prov-a"})
    assert r.status_code == 201
    key, key_id = r.json["key"], r.json["id"]
    api = Api(client, key)
    assert api.get("/v1/usage-records").status_code == 200
    assert finance.delete(f"/v1/api-keys/{key_id}").status_code == 200
    assert api.get("/v1/usage-records").status_code == 401
    with db.session() as s:
        from kernel.keys import ApiKey
        row = s.get(ApiKey, key_id)
        assert key not in (row.secret_hash, row.id)


@pytest.mark.parametrize("body, param", [
    ({"role": "root"}, "role"),
    ({"role": "provider"}, "subject"),
    ({"role": "provider", "subject": "nobody"}, "subject"),
    ({"role": "enterprise", "subject": "91330402MA2B7K3X1X"}, "subject"),
    ({"role": "finance", "subject": "x"}, "subject"),
])
def test_bad_key_requests_name_the_field(finance, body, param):
    r = finance.post("/v1/api-keys", json=body)
    assert r.status_code == 422 and r.json["error"]["param"] == param


def test_non_finance_keys_cannot_manage_keys(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=1)
    for api in (as_key("provider", "prov-a"), as_key("enterprise", usccs[0])):
        assert api.post("/v1/api-keys", json={"role": "finance"}).status_code == 403
        assert api.post("/v1/providers", json={}).status_code == 403


@pytest.mark.parametrize("period", ["２０２６-07", "2026-０7", "٢٠٢٦-07"])
def test_periods_take_ascii_digits_only(finance, period):
    # Python's \d matches any Unicode digit; a full-width month must be refused, not stored.
    r = finance.post("/v1/reconciliations", json={"period": period})
    assert r.status_code == 422 and r.json["error"]["param"] == "period", r.json
    listed = finance.get("/v1/usage-records", query_string={"period": period, "provider": "p"})
    assert listed.status_code == 400 and listed.json["error"]["param"] == "period", listed.json
    assert finance.get(f"/v1/reconciliations/{period}").status_code in (400, 404)
