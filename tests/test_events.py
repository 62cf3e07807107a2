"""The event outbox: derived from the audit chain in the same transaction, scoped per role."""

from __future__ import annotations

from sqlalchemy import select

from kernel.audit import AuditEvent
from kernel.outbox import OutboxEvent
from kernel.vocabulary import EVENT_OF_ACTION
from tests.factories import claim, invoice, make_uscc, setup_programme, usage

PERIOD = "2026-09"
U0, U1 = make_uscc(100), make_uscc(101)


def programme(finance, as_key):
    """prov-a; U0 with a clean claim and a flagged one (no such invoice), U1 with one claim."""
    setup_programme(finance, providers=("prov-a",), enterprises=2)
    prov = as_key("provider", "prov-a")
    ent0, ent1 = as_key("enterprise", U0), as_key("enterprise", U1)
    usage(prov, U0, 20_000, period=PERIOD, rid="u0")
    usage(prov, U1, 10_000, period=PERIOD, rid="u1")
    invoice(prov, "INV-1", U0, 20_000, period=PERIOD)
    invoice(prov, "INV-2", U1, 10_000, period=PERIOD)
    ok = claim(ent0, [("prov-a", "INV-1", 20_000)], period=PERIOD)
    flagged = claim(ent0, [("prov-a", "NO-SUCH", 5_000)], period=PERIOD)
    other = claim(ent1, [("prov-a", "INV-2", 10_000)], period=PERIOD)
    return prov, ent0, ent1, ok, flagged, other


def types(api, **query):
    r = api.get("/v1/events", query_string={"limit": 1000, **query})
    assert r.status_code == 200, r.json
    return [(e["type"], e["data"]["object"].get("id")) for e in r.json["data"]]


def test_reconciliation_and_decisions_raise_events_with_the_api_objects(finance, as_key):
    prov, ent0, ent1, ok, flagged, other = programme(finance, as_key)
    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    assert finance.post(f"/v1/claims/{ok}/approve", json={}).status_code == 200
    assert finance.post(f"/v1/claims/{flagged}/reject", json={"reason": "no invoice"}).status_code == 200

    assert types(finance) == [("claim.verified", ok), ("claim.flagged", flagged), ("claim.verified", other),
                              ("reconciliation.completed", f"rec_{PERIOD}"),
                              ("claim.approved", ok), ("claim.rejected", flagged)]
    event = finance.get("/v1/events", query_string={"type": "claim.approved"}).json["data"][0]
    assert event["object"] == "event" and event["id"].startswith("evt_")
    # data.object is the claim as GET /v1/claims/{id} showed it then
    assert event["data"]["object"] == ent0.get(f"/v1/claims/{ok}").json
    assert finance.get(f"/v1/events/{event['id']}").json == event


def test_each_role_sees_its_own_events(finance, as_key):
    prov, ent0, ent1, ok, flagged, other = programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    assert types(ent0) == [("claim.verified", ok), ("claim.flagged", flagged)]
    assert types(ent1) == [("claim.verified", other)]
    assert types(prov) == []  # no event of today's list is about a provider
    theirs = ent1.get("/v1/events").json["data"][0]["id"]
    assert ent0.get(f"/v1/events/{theirs}").status_code == 404
    assert finance.get(f"/v1/events/{theirs}").status_code == 200


def test_a_rerun_that_changes_nothing_raises_no_claim_event(finance, as_key):
    prov, ent0, ent1, ok, flagged, other = programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 200
    assert [t for t, _ in types(finance)].count("claim.verified") == 2
    assert [t for t, _ in types(finance)].count("reconciliation.completed") == 2
    # a change of figures is a new event, for the claims it changed and those only
    def states():
        claims = finance.get("/v1/claims", query_string={"period": PERIOD}).json["data"]
        return {c["id"]: (c["status"], c["payable"]) for c in claims}

    seen, before = len(types(finance)), states()
    invoice(prov, "NO-SUCH", U0, 5_000, period=PERIOD)
    usage(prov, U0, 5_000, period=PERIOD, rid="u0b")
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    after = states()
    changed = {cid for cid in after if after[cid] != before[cid]}
    raised = types(finance)[seen:]
    assert changed  # clm_1 now meets usage it does not invoice: flagged
    assert sorted(raised[:-1]) == sorted((f"claim.{after[cid][0]}", cid) for cid in changed)
    assert raised[-1][0] == "reconciliation.completed"


def test_events_and_the_audit_chain_agree(finance, as_key, db):
    prov, ent0, ent1, ok, flagged, other = programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    finance.post(f"/v1/claims/{ok}/approve", json={})
    with db.session() as s:
        entries = {e.seq: e for e in s.scalars(select(AuditEvent))}
        events = list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
    # every entry whose action raises an event has exactly one of that type, about its object
    for entry in entries.values():
        kind = EVENT_OF_ACTION.get(entry.action)
        mine = [e for e in events if e.audit_seq == entry.seq and e.type == kind]
        assert len(mine) == (1 if kind else 0), entry.action
        if kind:
            assert mine[0].object_id == entry.object_id
    # and every event points at the entry it came from, in chain order
    for event in events:
        assert event.audit_seq in entries
    assert [e.audit_seq for e in events] == sorted(e.audit_seq for e in events)


def test_a_rolled_back_change_leaves_no_event(finance, as_key, db):
    from billing import claims as claims_svc

    prov, ent0, ent1, ok, flagged, other = programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    before = len(types(finance))
    with db.session() as s:
        s.begin()
        c = claims_svc.get_claim(s, int(ok[4:]))
        from billing.policy_file import load_policy

        claims_svc.approve(s, load_policy(None), c, None)
        s.flush()
        s.rollback()
    assert len(types(finance)) == before


def test_event_list_pages_and_refuses_bad_queries(finance, as_key):
    programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    first = finance.get("/v1/events?limit=2").json
    assert first["has_more"] and len(first["data"]) == 2
    rest = finance.get(f"/v1/events?starting_after={first['data'][-1]['id']}").json["data"]
    assert [e["id"] for e in first["data"] + rest] == [e["id"] for e in finance.get("/v1/events").json["data"]]
    assert finance.get("/v1/events?type=claim.nope").json["error"]["param"] == "type"
    assert finance.get("/v1/events?starting_after=clm_1").json["error"]["param"] == "starting_after"
    assert finance.get("/v1/events/evt_999999").status_code == 404
