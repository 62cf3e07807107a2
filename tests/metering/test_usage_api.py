"""Listing, scoping, pagination and voiding of usage records."""

from __future__ import annotations

import pytest

from tests.factories import record, setup_programme


@pytest.fixture
def world(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    w = {
        "usccs": usccs,
        "finance": finance,
        "prov_a": as_key("provider", "prov-a"),
        "prov_b": as_key("provider", "prov-b"),
        "ent_0": as_key("enterprise", usccs[0]),
        "ent_1": as_key("enterprise", usccs[1]),
    }
    w["prov_a"].post("/v1/usage-records", json={"records": [record(i, usccs[i % 2]) for i in range(6)]})
    w["prov_b"].post("/v1/usage-records", json={"records": [record(i, usccs[0]) for i in range(3)]})
    return w


def ids(resp):
    return [(r["provider_id"], r["record_id"]) for r in resp.json["data"]]


def test_each_role_sees_its_own_records(world):
    assert len(world["finance"].get("/v1/usage-records").json["data"]) == 9
    assert {p for p, _ in ids(world["prov_a"].get("/v1/usage-records"))} == {"prov-a"}
    ent0 = world["ent_0"].get("/v1/usage-records").json["data"]
    assert len(ent0) == 6 and {r["enterprise_uscc"] for r in ent0} == {world["usccs"][0]}


def test_filters(world):
    u1 = world["usccs"][1]
    r = world["finance"].get(f"/v1/usage-records?enterprise={u1}&provider=prov-a")
    assert len(r.json["data"]) == 3
    assert world["finance"].get("/v1/usage-records?period=2026-09").json["data"] == []
    assert len(world["finance"].get("/v1/usage-records?period=2026-10").json["data"]) == 9


def test_another_subjects_records_are_404(world):
    assert world["prov_a"].get("/v1/usage-records?provider=prov-b").status_code == 404
    u1 = world["usccs"][1]
    assert world["ent_0"].get(f"/v1/usage-records?enterprise={u1}").status_code == 404
    assert world["prov_b"].get("/v1/usage-records/rec-5").status_code == 404
    assert world["prov_b"].delete("/v1/usage-records/rec-5").status_code == 404


def test_cursor_pagination_walks_every_record_once(world):
    seen, after = [], None
    while True:
        url = "/v1/usage-records?limit=4" + (f"&starting_after={after}" if after else "")
        page = world["finance"].get(url).json
        assert page["object"] == "list"
        seen += [r["id"] for r in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert len(seen) == len(set(seen)) == 9


@pytest.mark.parametrize("query, param", [("limit=0", "limit"), ("limit=1001", "limit"),
                                          ("limit=x", "limit"), ("period=2026-13", "period"),
                                          ("status=gone", "status"), ("starting_after=42", "starting_after")])
def test_bad_list_queries_are_400_naming_the_param(world, query, param):
    r = world["finance"].get(f"/v1/usage-records?{query}")
    assert r.status_code == 400
    assert r.json["error"]["param"] == param


def test_void_is_idempotent_keeps_reason_and_stays_visible(world):
    api = world["prov_a"]
    r = api.delete("/v1/usage-records/rec-1", json={"reason": "duplicate job"})
    assert r.status_code == 200
    assert r.json["status"] == "void" and r.json["void_reason"] == "duplicate job"
    again = api.delete("/v1/usage-records/rec-1", json={"reason": "other"})
    assert again.status_code == 200 and again.json["void_reason"] == "duplicate job"
    assert again.json["voided_at"] == r.json["voided_at"]
    voids = api.get("/v1/usage-records?status=void").json["data"]
    assert [v["record_id"] for v in voids] == ["rec-1"]
    # a replay of the voided record is still a duplicate and does not revive it
    rec = record(1, world["usccs"][1])
    assert api.post("/v1/usage-records", json={"records": [rec]}).json["duplicates"] == 1
    assert api.get("/v1/usage-records/rec-1").json["status"] == "void"


def test_finance_voids_naming_the_provider(world):
    assert world["finance"].delete("/v1/usage-records/rec-1").status_code == 400
    r = world["finance"].delete("/v1/usage-records/rec-1?provider=prov-b")
    assert r.status_code == 200 and r.json["provider_id"] == "prov-b"


def test_enterprise_cannot_push_or_void(world):
    assert world["ent_0"].post("/v1/usage-records", json={"records": []}).status_code == 403
    assert world["ent_0"].delete("/v1/usage-records/rec-1").status_code == 403
