"""POST /v1/usage-records: results per record, idempotency, every error code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from metering.models import UsageRecord
from tests.factories import make_uscc, record, setup_programme


@pytest.fixture
def world(finance, as_key):
    providers, usccs = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    return {
        "usccs": usccs,
        "prov_a": as_key("provider", "prov-a"),
        "prov_b": as_key("provider", "prov-b"),
    }


def push(api, records):
    return api.post("/v1/usage-records", json={"records": records})


def stored_count(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord))


def test_accepts_a_batch_with_one_result_per_record_in_order(world, db):
    usccs = world["usccs"]
    recs = [record(i, usccs[i % 2]) for i in range(10)]
    r = push(world["prov_a"], recs)
    assert r.status_code == 200
    body = r.json
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (10, 0, 0)
    assert [x["record_id"] for x in body["results"]] == [f"rec-{i}" for i in range(10)]
    assert stored_count(db) == 10


def test_replay_of_same_record_is_duplicate(world, db):
    recs = [record(i, world["usccs"][0]) for i in range(3)]
    push(world["prov_a"], recs)
    r = push(world["prov_a"], recs)
    assert (r.json["accepted"], r.json["duplicates"]) == (0, 3)
    assert {x["status"] for x in r.json["results"]} == {"duplicate"}
    assert stored_count(db) == 3


def test_equivalent_spelling_of_same_content_is_duplicate(world):
    rec = record(1, world["usccs"][0])
    push(world["prov_a"], [rec])
    same = dict(rec, quantity="2.500000", enterprise_uscc=rec["enterprise_uscc"].lower(),
                ended_at=datetime.fromisoformat(rec["ended_at"]).astimezone(
                    timezone(timedelta(hours=8))).isoformat())
    assert push(world["prov_a"], [same]).json["duplicates"] == 1


def test_changed_content_under_same_id_is_conflict_and_never_overwrites(world, db):
    rec = record(1, world["usccs"][0])
    push(world["prov_a"], [rec])
    r = push(world["prov_a"], [dict(rec, amount=9999)])
    res = r.json["results"][0]
    assert res["status"] == "rejected"
    assert res["error"]["code"] == "conflict"
    assert res["error"]["param"] == "records[0].record_id"
    with db.session() as s:
        assert s.scalar(select(UsageRecord.amount)) == rec["amount"]


def test_same_record_id_twice_in_one_batch(world, db):
    rec = record(1, world["usccs"][0])
    r = push(world["prov_a"], [rec, rec, dict(rec, amount=1)])
    assert [x["status"] for x in r.json["results"]] == ["accepted", "duplicate", "rejected"]
    assert r.json["results"][2]["error"]["code"] == "conflict"
    assert stored_count(db) == 1


def test_record_ids_are_scoped_per_provider(world, db):
    rec = record(1, world["usccs"][0])
    assert push(world["prov_a"], [rec]).json["accepted"] == 1
    assert push(world["prov_b"], [rec]).json["accepted"] == 1
    assert stored_count(db) == 2


FUTURE = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()


@pytest.mark.parametrize(
    "change, code, field",
    [
        ({"enterprise_uscc": "91330402MA2B7K3X1Y"}, "invalid_uscc", "enterprise_uscc"),
        ({"enterprise_uscc": 12345}, "invalid_uscc", "enterprise_uscc"),
        ({"enterprise_uscc": make_uscc(999)}, "unknown_enterprise", "enterprise_uscc"),
        ({"started_at": "2026-10-15T10:00:00"}, "missing_timezone", "started_at"),
        ({"ended_at": "2026-10-15T13:00:00"}, "missing_timezone", "ended_at"),
        ({"started_at": "2026-10-16T10:00:00+08:00"}, "invalid_time_range", "ended_at"),
        ({"ended_at": FUTURE}, "invalid_time_range", "ended_at"),
        ({"quantity": "-1"}, "invalid_quantity", "quantity"),
        ({"quantity": "0"}, "invalid_quantity", "quantity"),  # v2: > 0, even with an amount
        ({"quantity": "0.000000", "amount": 1}, "invalid_quantity", "quantity"),
        ({"quantity": "1.0000001"}, "invalid_quantity", "quantity"),
        ({"quantity": "abc"}, "invalid_quantity", "quantity"),
        ({"quantity": "NaN"}, "invalid_quantity", "quantity"),
        ({"quantity": True}, "invalid_quantity", "quantity"),
        ({"amount": 12.5}, "invalid_amount", "amount"),
        ({"amount": "100"}, "invalid_amount", "amount"),
        ({"amount": -1}, "invalid_amount", "amount"),
        ({"unit": "gpu_minute"}, "unsupported_unit", "unit"),
        ({"currency": "USD"}, "unsupported_currency", "currency"),
        ({"resource": "GPU H800"}, "invalid_field", "resource"),
        ({"started_at": "yesterday"}, "invalid_field", "started_at"),
        ({"record_id": ""}, "invalid_field", "record_id"),
        ({"extra": 1}, "invalid_field", "extra"),
        ({"metadata": "x"}, "invalid_field", "metadata"),
    ],
)
def test_every_bad_record_is_rejected_with_its_code_and_field(world, db, change, code, field):
    good = record(0, world["usccs"][0])
    bad = dict(record(1, world["usccs"][0]), **change)
    r = push(world["prov_a"], [good, good, good, good, bad])
    assert r.status_code == 200
    res = r.json["results"][4]
    assert res["status"] == "rejected"
    assert res["error"]["code"] == code
    assert res["error"]["param"] == f"records[4].{field}"
    assert res["error"]["message"]
    assert r.json["accepted"] == 1 and r.json["duplicates"] == 3 and r.json["rejected"] == 1


@pytest.mark.parametrize("missing", ["record_id", "enterprise_uscc", "quantity", "amount",
                                     "unit", "currency", "started_at", "ended_at", "resource"])
def test_missing_field_is_named(world, missing):
    bad = record(1, world["usccs"][0])
    del bad[missing]
    res = push(world["prov_a"], [bad]).json["results"][0]
    assert res["status"] == "rejected"
    assert res["error"]["param"] == f"records[0].{missing}"


def test_a_record_that_is_not_an_object_is_rejected(world):
    res = push(world["prov_a"], ["nope"]).json["results"][0]
    assert res["error"] == {"type": "invalid_request_error", "code": "invalid_field",
                            "message": "a usage record must be a JSON object", "param": "records[0]"}


def test_record_ending_within_five_minutes_ahead_is_accepted(world):
    # Computed here, not at import: the suite may run for longer than two minutes before this.
    now = datetime.now(UTC)
    rec = record(1, world["usccs"][0], ended_at=(now + timedelta(minutes=2)).isoformat(),
                 started_at=now.isoformat())
    assert push(world["prov_a"], [rec]).json["accepted"] == 1


def test_quantity_is_stored_exactly(world, db):
    push(world["prov_a"], [record(1, world["usccs"][0], quantity="123456789012.123457")])
    r = world["prov_a"].get("/v1/usage-records")
    assert r.json["data"][0]["quantity"] == "123456789012.123457"


def test_batch_of_5001_is_413_and_5000_is_accepted(world, db):
    uscc = world["usccs"][0]
    recs = [record(i, uscc) for i in range(5001)]
    r = push(world["prov_a"], recs)
    assert r.status_code == 413
    assert r.json["error"]["param"] == "records"
    assert stored_count(db) == 0
    r = push(world["prov_a"], recs[:5000])
    assert r.status_code == 200 and r.json["accepted"] == 5000


def test_malformed_json_is_400(world):
    r = world["prov_a"].post("/v1/usage-records", data="{not json",
                             headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json["error"]["code"] == "malformed_json"


@pytest.mark.parametrize("body, status, param", [
    ({}, 400, "records"),
    ({"records": {}}, 400, "records"),
    ({"records": []}, 422, "records"),
    ([1, 2], 400, None),
])
def test_envelope_errors(world, body, status, param):
    r = world["prov_a"].post("/v1/usage-records", json=body)
    assert r.status_code == status
    assert r.json["error"].get("param") == param


def test_shanghai_month_attribution(world):
    rec = record(1, world["usccs"][0], started_at="2026-10-31T15:30:00Z", ended_at="2026-10-31T16:30:00Z")
    rec2 = record(2, world["usccs"][0], started_at="2026-10-31T14:30:00Z", ended_at="2026-10-31T15:59:59Z")
    push(world["prov_a"], [rec, rec2])
    got = {r["record_id"]: r["period"] for r in world["prov_a"].get("/v1/usage-records").json["data"]}
    assert got == {"rec-1": "2026-11", "rec-2": "2026-10"}
    nov = world["prov_a"].get("/v1/usage-records?period=2026-11").json["data"]
    assert [r["record_id"] for r in nov] == ["rec-1"]


def test_failed_batch_leaves_nothing_behind(world, db):
    """The database refuses one row in the middle of a 3,000-record batch: nothing is stored."""
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("""
                CREATE FUNCTION refuse_boom() RETURNS trigger AS $$
                BEGIN IF NEW.record_id = 'rec-2500' THEN RAISE EXCEPTION 'refused'; END IF;
                RETURN NEW; END $$ LANGUAGE plpgsql"""))
            conn.execute(text("CREATE TRIGGER boom BEFORE INSERT ON usage_record "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_boom()"))
        else:
            conn.execute(text("CREATE TRIGGER boom BEFORE INSERT ON usage_record "
                              "WHEN NEW.record_id = 'rec-2500' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    try:
        recs = [record(i, world["usccs"][0]) for i in range(3000)]
        r = push(world["prov_a"], recs)
        assert r.status_code >= 500
        assert "error" in r.json
        assert stored_count(db) == 0
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER boom" + (" ON usage_record" if db.dialect == "postgresql" else "")))
            if db.dialect == "postgresql":
                conn.execute(text("DROP FUNCTION refuse_boom()"))
    assert push(world["prov_a"], recs).json["accepted"] == 3000


def test_metadata_with_fractional_numbers_is_stored(world):
    rec = record(1, world["usccs"][0], metadata={"util": 0.93, "nodes": [1, 2.5], "gpus": 8})
    r = push(world["prov_a"], [rec])
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert push(world["prov_a"], [rec]).json["duplicates"] == 1
    stored = world["prov_a"].get("/v1/usage-records").json["data"][0]["metadata"]
    assert stored == {"util": 0.93, "nodes": [1, 2.5], "gpus": 8}


def test_the_batch_answer_is_the_schemas_dump_of_every_kind_of_result(world, db):
    """api/usage.py answers with UsageBatch.dump_batch (no per-result re-validation): it must be
    exactly what the schema's own dump makes of the same batch, results of every kind included."""
    from api.schemas.usage import UsageBatch
    from metering.ingest import ingest_records

    usccs = world["usccs"]
    push(world["prov_a"], [record(0, usccs[0])])
    batch = [record(0, usccs[0]), record(1, usccs[1]), {**record(2, usccs[0]), "quantity": "-1"},
             {**record(0, usccs[0]), "amount": 1}, "not an object", {**record(3, usccs[1]), "metadata": {"x": 1.5}}]
    with db.session() as session, session.begin():
        result = ingest_records(session, "prov-a", batch)
        session.rollback()
    fast = UsageBatch.dump_batch(result)
    assert {r["status"] for r in fast["results"]} == {"accepted", "duplicate", "rejected"}
    assert fast == UsageBatch.dump(result)
    assert list(fast) == list(UsageBatch.dump(result))
