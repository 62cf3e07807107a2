"""Bad input is a 4xx with the error body naming its `param`, and stores nothing (issue 15.2)."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from billing.models import Claim, ProviderInvoice
from kernel.audit import AuditEvent
from kernel.periods import parse_period
from metering.models import Provider, UsageRecord
from tests.factories import claim, invoice, record, setup_programme, usage
from voucher.scheduler import JOBS

NON_ASCII_DIGITS = ("²", "①", "٢", "２")
BEYOND_64_BITS = ("9223372036854775808", "99999999999999999999999999")


def count(db, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.fixture
def programme(finance, as_key):
    _, u = setup_programme(finance, providers=("prov-a",), enterprises=1)
    return {"finance": finance, "uscc": u[0], "provider": as_key("provider", "prov-a"),
            "enterprise": as_key("enterprise", u[0])}


def _error(r, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.json)
    error = r.json["error"]
    assert error["type"] and error["message"]
    if code:
        assert error["code"] == code, error
    if param:
        assert error["param"] == param, error
    return error


# --- JSON nested too deep -----------------------------------------------------------------

def _post_routes(app) -> list[str]:
    paths = []
    for rule in app.url_map.iter_rules():
        if "POST" in rule.methods and rule.rule.startswith("/v1/"):
            paths.append(re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: {"claim_id": "clm_1"}.get(
                m.group(1), "x"), rule.rule))
    return paths


@pytest.mark.parametrize("body", ["[" * 10_000 + "]" * 10_000,
                                  '{"a":' * 10_000 + "1" + "}" * 10_000,
                                  "[" * 600 + "]" * 600])
def test_json_nested_too_deep_is_400_on_every_post(app, programme, db, body):
    before = count(db, AuditEvent)
    routes = _post_routes(app)
    assert "/v1/usage-records" in routes and "/v1/claims" in routes and len(routes) > 8
    for path in routes:
        answered = []
        for who in ("finance", "provider", "enterprise"):
            r = programme[who].post(path, data=body, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (path, who, r.json)
            answered.append(r.json["error"]["code"])
        assert "json_too_deep" in answered, (path, answered)
    assert count(db, AuditEvent) == before


def test_deep_metadata_rejects_its_record_only(programme, db):
    """~500 levels of metadata inside a full batch: that record is rejected, naming it."""
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    records = [record(i, programme["uscc"]) for i in range(5000)]
    records[4321]["metadata"] = deep
    records[7]["metadata"] = json.loads('{"a":' * 33 + "1" + "}" * 33)  # one past the cap
    records[8]["metadata"] = json.loads('{"a":' * 32 + "1" + "}" * 32)  # at the cap: fine
    r = programme["provider"].post("/v1/usage-records", json={"records": records})
    assert r.status_code == 200, r.json
    assert (r.json["accepted"], r.json["rejected"]) == (4998, 2)
    params = sorted(e["param"] for e in _errors_of(r.json))
    assert params == ["records[4321].metadata", "records[7].metadata"], params
    assert count(db, UsageRecord) == 4998


def _errors_of(answer: dict) -> list[dict]:
    found = []

    def walk(v):
        if isinstance(v, dict):
            if "param" in v and "code" in v:
                found.append(v)
            else:
                for x in v.values():
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(answer)
    return found


# --- digits that are not ASCII ------------------------------------------------------------

@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_non_ascii_digits_in_query_ids_and_numbers_are_400(programme, digit):
    f, e = programme["finance"], programme["enterprise"]
    for path, prefix in (("/v1/claims", "clm_"), ("/v1/provider-invoices", "inv_"),
                         ("/v1/usage-records", "ur_"), ("/v1/audit-events", "aud_"),
                         ("/v1/job-runs", "jr_")):
        _error(f.get(f"{path}?starting_after={prefix}1{digit}"), 400, "invalid_query", "starting_after")
        _error(f.get(f"{path}?limit={digit}"), 400, "invalid_query", "limit")
    _error(e.get(f"/v1/enterprises/{programme['uscc']}/quota?year=202{digit}"), 400, param="year")
    _error(f.get(f"/v1/claims/clm_{digit}"), 404, "resource_missing")
    _error(f.get(f"/v1/job-runs/jr_{digit}"), 404, "resource_missing")


def test_arabic_indic_year_is_not_2026(programme):
    # int("٢٠٢٦") is 2026: only ASCII digits are a year.
    r = programme["enterprise"].get(f"/v1/enterprises/{programme['uscc']}/quota?year=٢٠٢٦")
    _error(r, 400, "invalid_query", "year")


# --- periods ------------------------------------------------------------------------------

@pytest.mark.parametrize("period", ["0000-01", "1999-12", "2101-01", "2026-11\n", "٢٠٢٦-11", "2026-1"])
def test_one_period_parser_refuses_what_reconciliation_cannot_hold(programme, db, period):
    f, p, e = programme["finance"], programme["provider"], programme["enterprise"]
    with pytest.raises(ValueError):
        parse_period(period)
    r = p.post("/v1/provider-invoices", json={"invoice_no": "I-1", "enterprise_uscc": programme["uscc"],
                                              "period": period, "amount": 100, "issued_on": "2026-10-28"})
    _error(r, 422, param="period")
    r = e.post("/v1/claims", json={"period": period,
                                   "items": [{"provider_id": "prov-a", "invoice_no": "I-1", "amount_paid": 100}]})
    _error(r, 422, param="period")
    _error(f.post("/v1/reconciliations", json={"period": period}), 422, param="period")
    _error(f.get("/v1/claims", query_string={"period": period}), 400, "invalid_query", "period")
    _error(f.get("/v1/provider-invoices", query_string={"period": period}), 400, "invalid_query", "period")
    with pytest.raises(ValueError):
        JOBS["reconcile"].check_period(period)
    assert count(db, ProviderInvoice) == 0 and count(db, Claim) == 0


def test_periods_of_the_years_2000_to_2100_parse():
    assert parse_period("2000-01") == (2000, 1) and parse_period("2100-12") == (2100, 12)
    JOBS["pull"].check_period("2026-11-28T10:15")
    with pytest.raises(ValueError):
        JOBS["pull"].check_period("2026-11-28T10:15\n")


# --- trailing newlines ("$" matches before one) -------------------------------------------

def test_trailing_newline_is_not_part_of_a_valid_value(programme, db):
    f, p = programme["finance"], programme["provider"]
    r = p.post("/v1/usage-records", json={"records": [record(0, programme["uscc"], resource="gpu.h800\n")]})
    assert r.status_code == 200 and r.json["rejected"] == 1, r.json
    assert [e["param"] for e in _errors_of(r.json)] == ["records[0].resource"]
    r = f.post("/v1/providers", json={"id": "prov-x\n", "name": "X", "kind": "intelligent_computing",
                                      "listed_from": "2025-05-13"})
    _error(r, 422, param="id")
    assert count(db, UsageRecord) == 0 and count(db, Provider) == 1


# --- unknown provider, ids out of range ---------------------------------------------------

def test_finance_invoice_for_an_unknown_provider_is_422(programme, db):
    r = programme["finance"].post("/v1/provider-invoices", json={
        "invoice_no": "I-1", "enterprise_uscc": programme["uscc"], "period": "2026-10",
        "amount": 100, "issued_on": "2026-10-28", "provider_id": "no-such-provider"})
    _error(r, 422, "unknown_provider", "provider_id")
    assert count(db, ProviderInvoice) == 0


@pytest.mark.parametrize("digits", BEYOND_64_BITS)
def test_ids_beyond_64_bits_are_404(programme, digits):
    f, p, e = programme["finance"], programme["provider"], programme["enterprise"]
    usage(p, programme["uscc"], 1000)
    invoice(p, "I-1", programme["uscc"], 1000)
    claim(e, [("prov-a", "I-1", 1000)])
    _error(f.get(f"/v1/claims/clm_{digits}"), 404, "resource_missing")
    _error(f.post(f"/v1/claims/clm_{digits}/approve"), 404, "resource_missing")
    _error(f.post(f"/v1/claims/clm_{digits}/reject", json={"reason": "x"}), 404, "resource_missing")
    _error(f.get(f"/v1/job-runs/jr_{digits}"), 404, "resource_missing")
    for path, prefix in (("/v1/claims", "clm_"), ("/v1/provider-invoices", "inv_"),
                         ("/v1/usage-records", "ur_"), ("/v1/audit-events", "aud_"),
                         ("/v1/job-runs", "jr_")):
        _error(f.get(f"{path}?starting_after={prefix}{digits}"), 404, "resource_missing", "starting_after")
    # The largest 64-bit id is still an id: nothing after it.
    r = f.get("/v1/claims?starting_after=clm_9223372036854775807")
    assert r.status_code == 200 and r.json["data"] == []
