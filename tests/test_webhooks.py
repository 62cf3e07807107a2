"""Webhooks against a real receiving HTTP server on loopback (docs/API.md#webhooks)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

from sqlalchemy import select

from adapters.webhooks import deliver_due, deliver_until_idle
from kernel.webhook_signature import SignatureError, verify
from kernel.webhooks import Retry, WebhookDelivery, record_outcome
from tests.test_events import PERIOD, U0, programme
from tests.webhook_receiver import Receiver

FAST = Retry(backoff_base=0.05, backoff_max=0.2)


def register(api, url, events=("*",)):
    r = api.post("/v1/webhook-endpoints", json={"url": url, "events": list(events)})
    assert r.status_code == 201, r.json
    return r.json


def all_event_ids(api):
    return [e["id"] for e in api.get("/v1/events?limit=1000").json["data"]]


def test_deliveries_are_signed_and_carry_the_event(finance, as_key, db):
    receiver = Receiver().start()
    try:
        endpoint = register(finance, receiver.url)
        programme(finance, as_key)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        assert deliver_until_idle(db, FAST) == 4
    finally:
        receiver.stop()
    assert receiver.event_ids() == all_event_ids(finance)
    for headers, body in receiver.received:
        verify(endpoint["secret"], headers["Voucher-Signature"], body)
        event = json.loads(body)
        assert event == finance.get(f"/v1/events/{event['id']}").json
        assert headers["Content-Type"] == "application/json"
    # a captured delivery replayed later is refused by the helper
    headers, body = receiver.received[0]
    try:
        verify(endpoint["secret"], headers["Voucher-Signature"], body, now=time.time() + 301)
        raise AssertionError("replay accepted")
    except SignatureError:
        pass


def test_receiver_down_then_up_gets_every_event_once(finance, as_key, db):
    receiver = Receiver()  # not listening yet: connection refused
    register(finance, receiver.url)
    programme(finance, as_key)
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    finance.post("/v1/claims/clm_1/approve", json={})
    for _ in range(3):
        deliver_until_idle(db, FAST)
        time.sleep(0.06)
    with db.session() as s:
        rows = list(s.scalars(select(WebhookDelivery)))
    assert rows and all(d.status == "pending" and d.attempts >= 1 and d.last_status_code is None
                        and "Connection" in (d.last_error or "") for d in rows)
    receiver.start()
    try:
        deadline = time.monotonic() + 10
        while len(receiver.received) < len(rows) and time.monotonic() < deadline:
            deliver_until_idle(db, FAST)
            time.sleep(0.05)
        for _ in range(3):  # more rounds after success send nothing again
            deliver_until_idle(db, FAST)
            time.sleep(0.25)
    finally:
        receiver.stop()
    assert sorted(receiver.event_ids()) == sorted(all_event_ids(finance))
    assert len(set(receiver.event_ids())) == len(receiver.event_ids())
    deliveries = finance.get(f"/v1/webhook-endpoints/{rows[0].endpoint_id and 'we_' + str(rows[0].endpoint_id)}"
                             "/deliveries").json["data"]
    assert {d["status"] for d in deliveries} == {"succeeded"}
    assert all(d["last_status_code"] == 200 and d["next_attempt_at"] is None for d in deliveries)


def test_concurrent_workers_claim_each_delivery_once(finance, as_key, db):
    receiver = Receiver().start()
    try:
        register(finance, receiver.url)
        register(finance, receiver.url + "?second")
        programme(finance, as_key)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        workers = [threading.Thread(target=deliver_until_idle, args=(db, FAST, 1)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        receiver.stop()
    assert len(receiver.received) == 2 * len(all_event_ids(finance))  # once per endpoint


def test_an_endpoint_failing_for_three_days_is_disabled_and_a_manual_retry_revives_it(finance, as_key, db):
    receiver = Receiver(answer=500).start()
    try:
        endpoint = register(finance, receiver.url, events=["reconciliation.completed"])
        programme(finance, as_key)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        deliver_until_idle(db, FAST)
        worker = "test"
        with db.session() as s, s.begin():  # three days later, this worker's attempt fails too
            d = s.scalars(select(WebhookDelivery)).one()
            later = d.give_up_at + timedelta(seconds=1)
            d.leased_by = worker
        with db.session() as s:
            assert record_outcome(s, d.id, worker, FAST, 500, None, now=later) == "failed"
        got = finance.get(f"/v1/webhook-endpoints/{endpoint['id']}").json
        assert got["status"] == "disabled" and "HTTP 500" in got["disabled_reason"]
        assert "secret" not in got
        [delivery] = finance.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json["data"]
        assert delivery["status"] == "failed" and delivery["attempts"] == 2
        assert delivery["last_status_code"] == 500 and delivery["last_error"] == "HTTP 500"

        receiver.answer = 200
        r = finance.post(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}/retry")
        assert r.status_code == 200 and r.json["status"] == "pending"
        assert finance.get(f"/v1/webhook-endpoints/{endpoint['id']}").json["status"] == "enabled"
        deliver_until_idle(db, FAST)
    finally:
        receiver.stop()
    assert len(receiver.received) == 1 and len(receiver.refused) == 1


def test_backoff_doubles_up_to_its_cap():
    retry = Retry()
    assert [retry.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert retry.delay(20).total_seconds() == 6 * 3600


def test_a_host_removed_from_the_allow_list_is_not_posted_to(finance, as_key, db):
    receiver = Receiver().start()
    try:
        register(finance, receiver.url)
        programme(finance, as_key)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        deliver_due(db, Retry(allowed_hosts=("hooks.example.com",)))
    finally:
        receiver.stop()
    assert receiver.received == []
    with db.session() as s:
        rows = list(s.scalars(select(WebhookDelivery)))
    assert {d.status for d in rows} == {"failed"} and "not allowed" in rows[0].last_error


def test_registration_checks_host_and_types_and_shows_the_secret_once(finance, as_key):
    r = finance.post("/v1/webhook-endpoints", json={"url": "https://evil.example.com/x", "events": ["*"]})
    assert r.status_code == 422 and r.json["error"]["code"] == "url_not_allowed"
    r = finance.post("/v1/webhook-endpoints", json={"url": "file:///etc/passwd", "events": ["*"]})
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_url"
    r = finance.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1/x", "events": ["claim.nope"]})
    assert r.status_code == 422 and r.json["error"]["param"] == "events[0]"
    created = register(finance, "http://localhost:9/x", ["claim.approved"])
    assert created["secret"].startswith("whsec_") and created["status"] == "enabled"
    assert "secret" not in finance.get(f"/v1/webhook-endpoints/{created['id']}").json
    assert [e["id"] for e in finance.get("/v1/webhook-endpoints").json["data"]] == [created["id"]]
    # another subject does not see it; deleting it removes it
    assert as_key("enterprise", U0).get(f"/v1/webhook-endpoints/{created['id']}").status_code == 404
    assert finance.delete(f"/v1/webhook-endpoints/{created['id']}").status_code == 200
    assert finance.get("/v1/webhook-endpoints").json["data"] == []


def test_an_enterprise_endpoint_receives_only_its_own_events(finance, as_key, db):
    receiver = Receiver().start()
    try:
        ent = as_key("enterprise", U0)
        programme(finance, as_key)
        register(ent, receiver.url)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        deliver_until_idle(db, FAST)
    finally:
        receiver.stop()
    assert receiver.event_ids() == all_event_ids(ent) and len(receiver.event_ids()) == 2
