"""Fuzzing: schemathesis against the live server's /openapi.json, and hypothesis-made batches.

schemathesis runs as a CLI against a real gunicorn on PostgreSQL, once per role so each role's
operations are reached, with bounded examples and a fixed seed (VOUCHER_FUZZ_SEED changes it):
no 5xx, and no status, content type, header or body outside the documented schema. The
console's HTML forms (/console, CSRF-protected) are not part of the JSON API and are left out.

The push API is fuzzed with hypothesis: batches mixing valid records with every kind of wrong
field. Whatever comes in, the answer is 200 with one result per record, every accepted record
is stored exactly as sent, nothing rejected is stored, and a replay stores nothing new.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from billing.ledger import verify as verify_ledger
from kernel.audit import verify_chain
from metering.models import UsageRecord
from tests.conftest import Api, new_key
from tests.factories import claim, invoice, make_uscc, setup_programme, usage
from tests.server import Server

ST = Path(sys.executable).with_name("st")
SEED = os.environ.get("VOUCHER_FUZZ_SEED", "20261129")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def schemathesis(server_url: str, key: str, *filters: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ST), "run", f"{server_url}/openapi.json", "--checks", CHECKS,
         "--phases", "examples,coverage,fuzzing", "--max-examples", "20", "--seed", SEED,
         # One worker: with two, schemathesis builds hypothesis lambda descriptions (ast.parse)
         # in two threads at once, and CPython before 3.11.8 shares the AST constructor's
         # recursion counter between threads (gh-106905): a spurious "SystemError: AST
         # constructor recursion depth mismatch" in the fuzzer, never in the service.
         "--workers", "1", "--request-timeout", "30", "--no-shrink",
         "--exclude-path-regex", "^/console", "-H", f"Authorization: Bearer {key}", *filters],
        capture_output=True, text=True, timeout=600)


def test_schemathesis_finds_no_server_error_and_nothing_undocumented(pg, tmp_path, say):
    _, (u0, _) = setup_programme(pg.finance, providers=("prov-a",), enterprises=2)
    provider, enterprise = pg.as_key("provider", "prov-a"), pg.as_key("enterprise", u0)
    usage(provider, u0, 20_000, period="2026-09")
    invoice(provider, "INV-1", u0, 20_000, period="2026-09")
    claim(enterprise, [("prov-a", "INV-1", 20_000)], period="2026-09")
    runs = {
        "finance": (new_key(pg.db, "finance"), ()),
        "provider": (provider.key, ("--include-path-regex", "^/v1/(usage-records|provider-invoices)")),
        "enterprise": (enterprise.key, ("--include-path-regex", "^/v1/(claims|enterprises/)")),
    }
    # Fuzzing sends wrong keys on purpose; the failure limit would soon answer 429 to all.
    log = tmp_path / "server.log"
    with Server(pg.url, workers=2, env={"VOUCHER_AUTH_FAIL_LIMIT": "0"}, log_path=log) as server:
        for role, (key, filters) in runs.items():
            done = schemathesis(server.url, key, *filters)
            summary = [line.strip() for line in done.stdout.splitlines()
                       if line.strip().startswith(("Selected:", "Failures:"))
                       or re.match(r"\s*\d+ generated", line)]
            say(f"\n[schemathesis as {role}, seed {SEED}] " + "; ".join(summary))
            errors = [line for line in log.read_text(errors="replace").splitlines()
                      if '"level": "error"' in line]
            assert done.returncode == 0, (done.stdout[-20000:] + done.stderr[-5000:]
                                          + "\nserver errors:\n" + "\n".join(errors[-10:]))
    with pg.db.session() as s:
        assert verify_ledger(s).ok
        chain = verify_chain(s)
        assert chain.ok, [str(p) for p in chain.problems]


# --- hypothesis: usage batches through the push API --------------------------------------------

U0 = make_uscc(100)
NOW = datetime.now(UTC)
texts = st.text(min_size=0, max_size=12)
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), texts,
                 st.lists(st.integers(), max_size=2), st.dictionaries(texts, st.integers(), max_size=2))


def mostly(draw, valid, wrong):
    """Usually a valid value, sometimes a wrong one, so batches mix accepted and rejected."""
    return draw(valid) if draw(st.integers(0, 9)) < 8 else draw(wrong)


@st.composite
def times(draw) -> tuple[object, object]:
    ended = NOW - timedelta(days=draw(st.integers(-2, 400)), seconds=draw(st.integers(0, 86_400)))
    started = ended - timedelta(seconds=mostly(draw, st.integers(0, 10 * 86_400), st.integers(-600, -1)))
    offset = timedelta(hours=draw(st.sampled_from([0, 8, -5])))
    fmt = mostly(draw, st.sampled_from(["iso", "z"]), st.sampled_from(["naive", "junk"]))

    def show(t: datetime):
        if fmt == "iso":
            return t.astimezone(timezone(offset)).isoformat()
        if fmt == "z":
            return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if fmt == "naive":
            return t.replace(tzinfo=None).isoformat()
        return draw(junk)

    return show(started), show(ended)


@st.composite
def usage_record(draw, n: int) -> dict:
    started, ended = draw(times())
    rec = {
        "record_id": mostly(draw, st.sampled_from([f"r{n}", f"r{max(n - 1, 0)}"]),
                            st.one_of(st.text(min_size=1, max_size=30), junk)),
        "enterprise_uscc": mostly(draw, st.sampled_from([U0, U0.lower(), f" {U0} "]),
                                  st.sampled_from([make_uscc(999), "91330402MA2B7K3X1X", "", "x"])),
        "resource": mostly(draw, st.sampled_from(["gpu.h800", "gpu", "cpu"]),
                           st.sampled_from(["GPU", "", "gpu h800"])),
        "unit": mostly(draw, st.sampled_from(["gpu_hour", "core_hour", "node_hour"]),
                       st.sampled_from(["hour", ""])),
        "quantity": mostly(draw, st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False,
                                             allow_infinity=False).map(str),
                           st.one_of(st.decimals(places=8, allow_nan=True).map(str),
                                     st.integers(-5, 10**6), st.floats(allow_nan=True), junk)),
        "started_at": started,
        "ended_at": ended,
        "amount": mostly(draw, st.integers(0, 10**12),
                         st.one_of(st.integers(-10, -1), st.integers(10**16, 10**20), st.floats(0, 1e6),
                                   st.just("100"), junk)),
        "currency": mostly(draw, st.just("CNY"), st.sampled_from(["cny", "USD", ""])),
    }
    if draw(st.booleans()):
        rec["metadata"] = mostly(draw, st.dictionaries(st.text(max_size=8), st.one_of(
            st.text(max_size=20), st.integers(), st.booleans(), st.none()), max_size=4), junk)
    if draw(st.integers(0, 9)) == 0:
        for field in draw(st.sets(st.sampled_from(sorted(rec)), min_size=1, max_size=2)):
            del rec[field]
    if draw(st.integers(0, 19)) == 0:
        rec["unexpected"] = 1
    return rec


@st.composite
def batches(draw) -> list:
    size = draw(st.integers(1, 12))
    return [draw(usage_record(n)) if draw(st.integers(0, 19)) else draw(junk) for n in range(size)]


_example = iter(range(10**9))


@pytest.fixture
def pusher(client, finance, db):
    setup_programme(finance, providers=("prov-a",), enterprises=1)
    return Api(client, new_key(db, "provider", "prov-a"))


def stored(db) -> dict[str, tuple]:
    with db.session() as s:
        return {r.record_id: (r.amount, r.quantity, r.enterprise_uscc) for r in s.scalars(select(UsageRecord))}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_any_batch_is_answered_record_by_record_and_replays_store_nothing(pusher, db, batch):
    # Ids unique to this example (repeats inside the batch stay repeats), so examples run on
    # one database without meeting each other's records.
    tag = f"x{next(_example)}-"
    for rec in batch:
        if isinstance(rec, dict) and isinstance(rec.get("record_id"), str):
            rec["record_id"] = tag + rec["record_id"]
    before = stored(db)
    r = pusher.post("/v1/usage-records", json={"records": batch})
    assert r.status_code == 200, (r.status_code, r.json)
    body = r.json
    results = body["results"]
    assert len(results) == len(batch)
    counts = {k: sum(1 for x in results if x["status"] == k) for k in ("accepted", "duplicate", "rejected")}
    assert (counts["accepted"], counts["duplicate"], counts["rejected"]) == (
        body["accepted"], body["duplicates"], body["rejected"])
    after = stored(db)
    assert set(before) <= set(after) and all(after[k] == v for k, v in before.items()), "changed a record"
    for rec, res in zip(batch, results, strict=True):
        if res["status"] == "rejected":
            assert res["error"]["code"] and res["error"]["type"] == "invalid_request_error"
            assert res["error"].get("param", "").startswith("records[")
            continue
        assert isinstance(rec, dict) and res["record_id"] == rec["record_id"]
        amount, quantity, uscc = after[rec["record_id"]]
        if res["status"] == "accepted":
            assert rec["record_id"] not in before
            assert amount == rec["amount"] and quantity == Decimal(str(rec["quantity"]))
            assert uscc == U0
    assert len(after) - len(before) == counts["accepted"]
    again = pusher.post("/v1/usage-records", json={"records": batch})
    assert again.status_code == 200 and again.json["accepted"] == 0
    assert stored(db) == after


def test_pushes_with_a_nul_character_are_refused_not_crashed(pusher, db):
    rec = {"record_id": "nul\u0000id", "enterprise_uscc": U0, "resource": "gpu", "unit": "gpu_hour",
           "quantity": "1", "started_at": "2026-10-01T00:00:00+08:00",
           "ended_at": "2026-10-01T01:00:00+08:00", "amount": 100, "currency": "CNY",
           "metadata": {"note": "a\u0000b"}}
    r = pusher.post("/v1/usage-records", json={"records": [rec]})
    assert r.status_code in (200, 400), r.json
    if r.status_code == 200:
        assert r.json["rejected"] == 1
    r = pusher.get("/v1/usage-records?enterprise=%00")
    assert r.status_code < 500, r.json

