"""Idempotency-Key on POST: replay, reuse with another body, retry after a failure."""

from __future__ import annotations

from tests.factories import setup_programme


def test_same_key_same_body_replays_the_first_answer(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=1)
    ent = as_key("enterprise", usccs[0])
    body = {"period": "2026-10", "items": [{"provider_id": "prov-a", "invoice_no": "A-1", "amount_paid": 10}]}
    first = ent.post("/v1/claims", json=body, headers={"Idempotency-Key": "claim-oct"})
    again = ent.post("/v1/claims", json=body, headers={"Idempotency-Key": "claim-oct"})
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ent.get("/v1/claims").json["data"]) == 1
    other = ent.post("/v1/claims", json=body, headers={"Idempotency-Key": "claim-oct-2"})
    assert other.json["id"] != first.json["id"]


def test_same_key_with_another_body_is_refused(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=1)
    ent = as_key("enterprise", usccs[0])
    body = {"period": "2026-10", "items": [{"provider_id": "prov-a", "invoice_no": "A-1", "amount_paid": 10}]}
    ent.post("/v1/claims", json=body, headers={"Idempotency-Key": "k"})
    body["items"][0]["amount_paid"] = 11
    r = ent.post("/v1/claims", json=body, headers={"Idempotency-Key": "k"})
    assert r.status_code == 409
    assert r.json["error"]["type"] == "idempotency_error" and r.json["error"]["param"] == "Idempotency-Key"


def test_keys_are_scoped_to_the_api_key_and_errors_are_replayed(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=2)
    a, b = as_key("enterprise", usccs[0]), as_key("enterprise", usccs[1])
    bad = {"period": "2099-01", "items": [{"provider_id": "prov-a", "invoice_no": "A-1", "amount_paid": 1}]}
    r1 = a.post("/v1/claims", json=bad, headers={"Idempotency-Key": "same"})
    r2 = a.post("/v1/claims", json=bad, headers={"Idempotency-Key": "same"})
    assert r1.status_code == r2.status_code == 422 and r2.headers.get("Idempotent-Replayed") == "true"
    good = dict(bad, period="2026-10")
    assert b.post("/v1/claims", json=good, headers={"Idempotency-Key": "same"}).status_code == 201


def test_overlong_key_is_400(finance):
    r = finance.post("/v1/providers", json={}, headers={"Idempotency-Key": "x" * 256})
    assert r.status_code == 400 and r.json["error"]["param"] == "Idempotency-Key"
