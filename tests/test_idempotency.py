"""Idempotency-Key on POST: replay, reuse with another body, retry after a failure."""

from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner
from sqlalchemy import select, update

from api.idempotency import IdempotencyKey, expire_answers
from config.settings import Settings
from kernel.db import utcnow
from tests.factories import setup_programme
from voucher.cli import main
from voucher.scheduler import JOBS


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


# --- expiry -------------------------------------------------------------------------------

def _answers(db) -> set[str]:
    with db.session() as s:
        return set(s.scalars(select(IdempotencyKey.key)))


def _age(db, key: str, hours: float) -> None:
    with db.session() as s, s.begin():
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key == key)
                  .values(created_at=utcnow() - timedelta(hours=hours)))


def _three_answers(finance, db) -> None:
    for key, hours in (("old", 25), ("stale-claim", 30), ("fresh", 23)):
        r = finance.post("/v1/providers", json={"id": f"p-{key}", "name": key, "kind": "supercomputing",
                                                "listed_from": "2025-05-13"}, headers={"Idempotency-Key": key})
        assert r.status_code == 201
        _age(db, key, hours)
    with db.session() as s, s.begin():  # a request that died between claim and answer
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key == "stale-claim").values(status="processing"))


def test_answers_older_than_the_ttl_are_deleted_and_newer_ones_replay(finance, db):
    _three_answers(finance, db)
    with db.session() as s, s.begin():
        assert expire_answers(s, timedelta(hours=24)) == 2
    assert _answers(db) == {"fresh"}
    r = finance.post("/v1/providers", json={"id": "p-fresh", "name": "fresh", "kind": "supercomputing",
                                            "listed_from": "2025-05-13"}, headers={"Idempotency-Key": "fresh"})
    assert r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true"


def test_expiry_is_a_scheduled_job_run_from_the_cli_with_the_ttl_setting(finance, db, database_url,
                                                                        monkeypatch):
    assert JOBS["idempotency-expiry"].cron(Settings()) == "40 * * * *"
    assert Settings.from_env(env={"VOUCHER_IDEMPOTENCY_TTL_HOURS": "48"}).idempotency_ttl_hours == 48
    _three_answers(finance, db)
    monkeypatch.setenv("VOUCHER_DATABASE_URL", database_url)
    monkeypatch.delenv("VOUCHER_JOBS_MODULE", raising=False)
    monkeypatch.setenv("VOUCHER_IDEMPOTENCY_TTL_HOURS", "26")  # "old" (25 h) is kept
    run = CliRunner().invoke(main, ["jobs", "run", "idempotency-expiry", "2026-12-02T10:40"])
    assert run.exit_code == 0, run.output
    assert '"deleted": 1' in run.output and '"ttl_hours": 26' in run.output
    assert _answers(db) == {"fresh", "old"}
    monkeypatch.setenv("VOUCHER_IDEMPOTENCY_TTL_HOURS", "24")
    again = CliRunner().invoke(main, ["jobs", "run", "idempotency-expiry", "2026-12-02T11:40"])
    assert again.exit_code == 0 and '"deleted": 1' in again.output
    assert _answers(db) == {"fresh"}


def test_a_key_older_than_the_ttl_setting_is_free_for_a_new_request(finance, db, app):
    app.config["VOUCHER_SETTINGS"] = app.config["VOUCHER_SETTINGS"].with_(idempotency_ttl_hours=1)
    body = {"id": "p-1", "name": "one", "kind": "supercomputing", "listed_from": "2025-05-13"}
    assert finance.post("/v1/providers", json=body, headers={"Idempotency-Key": "k"}).status_code == 201
    _age(db, "k", 2)
    r = finance.post("/v1/providers", json=dict(body, id="p-2"), headers={"Idempotency-Key": "k"})
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers and r.json["id"] == "p-2"
