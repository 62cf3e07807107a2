"""Finance registry: providers, enterprises (USCC checked), model filings."""

from __future__ import annotations

import pytest

from tests.factories import make_uscc


def test_provider_crud(finance):
    body = {"id": "jx-zhisuan", "name": "嘉兴智算", "kind": "intelligent_computing",
            "listed_from": "2025-05-13"}
    r = finance.post("/v1/providers", json=body)
    assert r.status_code == 201 and r.json["listed_from"] == "2025-05-13"
    assert finance.post("/v1/providers", json=body).status_code == 409
    r = finance.patch("/v1/providers/jx-zhisuan", json={"listed_until": "2027-12-31"})
    assert r.json["listed_until"] == "2027-12-31"
    assert finance.get("/v1/providers/jx-zhisuan").json["name"] == "嘉兴智算"
    assert [p["id"] for p in finance.get("/v1/providers").json["data"]] == ["jx-zhisuan"]
    assert finance.get("/v1/providers/none").status_code == 404


@pytest.mark.parametrize("body, param", [
    ({"id": "Bad_Id", "name": "x", "kind": "supercomputing"}, "id"),
    ({"id": "ok-id", "name": "x", "kind": "cloud"}, "kind"),
    ({"id": "ok-id", "kind": "supercomputing"}, "name"),
    ({"id": "ok-id", "name": "x", "kind": "supercomputing", "listed_from": "2025-13-01"}, "listed_from"),
    ({"id": "ok-id", "name": "x", "kind": "supercomputing", "colour": "red"}, "colour"),
])
def test_bad_provider_names_the_field(finance, body, param):
    r = finance.post("/v1/providers", json=body)
    assert r.status_code == 422 and r.json["error"]["param"] == param


def test_enterprise_uscc_is_validated_and_upper_cased(finance):
    code = make_uscc(7)
    r = finance.post("/v1/enterprises", json={"uscc": code.lower(), "name": "企业", "eligible": True})
    assert r.status_code == 201 and r.json["uscc"] == code
    bad = code[:-1] + ("0" if code[-1] != "0" else "1")
    r = finance.post("/v1/enterprises", json={"uscc": bad, "name": "企业"})
    assert r.status_code == 422 and r.json["error"] == {
        "type": "invalid_request_error", "code": "invalid_uscc",
        "message": r.json["error"]["message"], "param": "uscc"}
    r = finance.patch(f"/v1/enterprises/{code}", json={"eligible": False, "county": "海宁市"})
    assert r.json["eligible"] is False and r.json["county"] == "海宁市"


def test_model_filing_is_recorded_once(finance):
    code = make_uscc(8)
    finance.post("/v1/enterprises", json={"uscc": code, "name": "企业"})
    body = {"filing_no": "Zhejiang-001", "model_name": "禾城", "obtained_on": "2026-03-01"}
    assert finance.post(f"/v1/enterprises/{code}/model-filings", json=body).status_code == 201
    assert finance.post(f"/v1/enterprises/{code}/model-filings", json=body).status_code == 200
    r = finance.post(f"/v1/enterprises/{code}/model-filings", json=dict(body, model_name="x"))
    assert r.status_code == 409
    ent = finance.get(f"/v1/enterprises/{code}").json
    assert [f["filing_no"] for f in ent["model_filings"]] == ["Zhejiang-001"]


def test_enterprise_sees_itself_only(finance, as_key):
    a, b = make_uscc(1), make_uscc(2)
    for code in (a, b):
        finance.post("/v1/enterprises", json={"uscc": code, "name": code})
    ent = as_key("enterprise", a)
    assert ent.get(f"/v1/enterprises/{a}").status_code == 200
    assert ent.get(f"/v1/enterprises/{b}").status_code == 404
    assert ent.get("/v1/enterprises").status_code == 403
    assert ent.patch(f"/v1/enterprises/{a}", json={"eligible": True}).status_code == 403
