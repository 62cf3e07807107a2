"""One legal entity, one enterprise (docs/API.md#uscc): every spelling of a USCC — with
spaces, hyphens, full-width spaces, in lower case — is the canonical code, in storage,
look-ups, key subjects, URL paths, pushes, invoices and claims alike."""

from __future__ import annotations

import pytest

from kernel.uscc import canonical_uscc, valid_uscc
from tests.factories import claim, invoice, make_uscc, record, setup_programme


def spellings(code: str) -> list[str]:
    head, tail = code[:8], code[8:]
    return [f"{head}-{tail}", f"{head} {tail}", f"{head}\u3000{tail}".lower(),
            f" {head[:4]}\u00a0{head[4:]}\u2013{tail} ", f"{head}\u2009{tail}"]


@pytest.mark.parametrize("i", range(5))
def test_every_spelling_has_one_canonical_form(i):
    code = make_uscc(3)
    written = spellings(code)[i]
    assert canonical_uscc(written) == valid_uscc(written) == code


def test_a_canonical_string_with_a_wrong_check_digit_is_not_valid():
    code = make_uscc(3)
    assert valid_uscc(code[:-1] + ("0" if code[-1] != "0" else "1")) is None
    assert valid_uscc(None) is None and valid_uscc("") is None


def test_a_second_spelling_of_a_registered_code_is_the_same_enterprise(finance):
    code = make_uscc(41)
    r = finance.post("/v1/enterprises", json={"uscc": spellings(code)[0], "name": "甲", "eligible": True})
    assert r.status_code == 201 and r.json["uscc"] == code
    for written in [code, *spellings(code)[1:]]:
        again = finance.post("/v1/enterprises", json={"uscc": written, "name": "乙", "eligible": True})
        assert again.status_code == 409 and again.json["error"]["code"] == "resource_exists", written
    listed = finance.get("/v1/enterprises").json["data"]
    assert [e["uscc"] for e in listed] == [code]


def test_paths_filters_and_key_subjects_take_any_spelling(finance, as_key):
    _providers, (code, _other) = setup_programme(finance)
    hyphen = spellings(code)[0]
    assert finance.get(f"/v1/enterprises/{hyphen}").json["uscc"] == code
    assert finance.get(f"/v1/enterprises/{spellings(code)[1]}/quota?year=2026").json["enterprise_uscc"] == code
    filing = {"filing_no": "ZJ-1", "model_name": "m", "obtained_on": "2026-02-01"}
    assert finance.post(f"/v1/enterprises/{hyphen}/model-filings", json=filing).status_code == 201
    key = finance.post("/v1/api-keys", json={"role": "enterprise", "subject": spellings(code)[2]})
    assert key.status_code == 201 and key.json["subject"] == code
    quota = finance.get(f"/v1/enterprises/{code}/quota?year=2026").json
    assert quota["cap_basis"] == "new_model_filing"


def test_pushes_invoices_and_claims_with_either_spelling_share_one_cap(finance, as_key):
    _providers, (code, _other) = setup_programme(finance)
    provider = as_key("provider", "prov-a")
    a, b = spellings(code)[0], spellings(code)[1]
    sep = record(1, a, record_id="r-a", amount=300_000_000, quantity="10",
                 started_at="2026-09-15T10:00:00+08:00", ended_at="2026-09-15T11:00:00+08:00")
    oct_ = record(2, b, record_id="r-b", amount=300_000_000, quantity="10")
    pushed = provider.post("/v1/usage-records", json={"records": [sep, oct_]}).json
    assert pushed["accepted"] == 2 and pushed["rejected"] == 0, pushed
    replay = provider.post("/v1/usage-records", json={"records": [dict(sep, enterprise_uscc=code)]})
    assert replay.json["duplicates"] == 1  # the same record, whichever spelling
    invoice(provider, "INV-A", a, 300_000_000, period="2026-09")
    invoice(provider, "INV-B", b, 300_000_000)
    assert provider.post("/v1/provider-invoices", json={
        "invoice_no": "INV-A", "enterprise_uscc": code, "period": "2026-09", "amount": 300_000_000,
        "issued_on": "2026-09-28"}).status_code == 200  # the same invoice, not a conflict
    enterprise = as_key("enterprise", code)
    claim(enterprise, [("prov-a", "INV-A", 300_000_000)], period="2026-09", enterprise_uscc=a)
    claim(finance, [("prov-a", "INV-B", 300_000_000)], enterprise_uscc=b)
    for period in ("2026-09", "2026-10"):
        run = finance.post("/v1/reconciliations", json={"period": period})
        assert run.status_code == 201, run.json
    claims = finance.get(f"/v1/claims?enterprise={spellings(code)[2]}").json["data"]
    assert len(claims) == 2 and {c["enterprise_uscc"] for c in claims} == {code}
    assert [c["computed"] for c in claims] == [150_000_000, 150_000_000]
    quota = enterprise.get(f"/v1/enterprises/{b}/quota?year=2026").json
    assert quota["cap"] == 200_000_000  # ¥2,000,000 once, not once per spelling
    assert quota["reserved"] + quota["granted"] == 200_000_000 and quota["remaining"] == 0
    assert sum(c["payable"] for c in claims) == 200_000_000
    usage = enterprise.get(f"/v1/usage-records?enterprise={a}").json["data"]
    assert {u["enterprise_uscc"] for u in usage} == {code} and len(usage) == 2
