"""Every route of the app × every kind of caller, from the URL map: nothing escapes.

A route missing from EXPECT fails the test, so a new endpoint needs a line here saying
who may call it and what another subject gets. The statuses for callers without a key,
with a wrong key, or with a role outside the view's `@requires(...)` are derived from the
view itself (401, 401, 403); the table gives the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, new_key
from tests.factories import claim, invoice, make_uscc, record, setup_programme, usage
from voucher.app import create_app

# Callers, in the order they are tried on each route; "other_*" are of the right role but
# another subject than the resource's, so mutations by them come before the owner's.
CALLERS = ("none", "wrong", "other_provider", "other_enterprise", "provider", "enterprise", "finance")
ROLE_OF = {"none": None, "wrong": None, "finance": "finance", "provider": "provider",
           "other_provider": "provider", "enterprise": "enterprise", "other_enterprise": "enterprise"}
WRONG_KEY = "vch_0123456789abcdef_" + "x" * 43
PERIOD = "2026-09"


@dataclass(frozen=True)
class Route:
    """How to call a protected route, and the status each permitted caller must get."""

    url: str
    expect: dict[str, int]
    body: Any = None


@dataclass(frozen=True)
class Public:
    url: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


U0, U1 = make_uscc(100), make_uscc(101)  # the enterprises setup_programme registers first
# An endpoint of the enterprise U0: only its own enterprise reaches it.
OWN_ENDPOINT = {"other_provider": 404, "other_enterprise": 404, "provider": 404, "enterprise": 200,
                "finance": 404}
EXPECT: dict[str, Route | Public] = {
    # public
    "GET /healthz": Public("/healthz"),
    "GET /readyz": Public("/readyz"),
    "GET /metrics": Public("/metrics"),
    "GET /metrics/finance": Route("/metrics/finance", {"finance": 200}),  # money: finance only
    "GET /openapi.json": Public("/openapi.json"),
    "GET /docs": Public("/docs"),
    "GET /static/<path:filename>": Public("/static/{static_file}", status=0),  # 0: see static_status
    # service
    "POST /v1/api-keys": Route("/v1/api-keys", {"finance": 201}, {"role": "finance"}),
    "DELETE /v1/api-keys/<key_id>": Route("/v1/api-keys/{spare_key}", {"finance": 200}),
    "GET /v1/audit-events": Route("/v1/audit-events", {"finance": 200}),
    "GET /v1/job-runs": Route("/v1/job-runs", {"finance": 200}),
    "GET /v1/budget": Route("/v1/budget", {"finance": 200}),  # the programme's money: finance only
    "GET /v1/job-runs/<run_id>": Route("/v1/job-runs/{job_run}", {"finance": 200}),
    # registry
    "POST /v1/providers": Route("/v1/providers", {"finance": 201},
                                {"id": "prov-new", "name": "N", "kind": "supercomputing"}),
    "GET /v1/providers": Route("/v1/providers", {"finance": 200}),
    "GET /v1/providers/<provider_id>": Route(
        "/v1/providers/prov-a", {"other_provider": 404, "provider": 200, "finance": 200}),
    "PATCH /v1/providers/<provider_id>": Route("/v1/providers/prov-a", {"finance": 200}, {"county": "秀洲区"}),
    "POST /v1/enterprises": Route("/v1/enterprises", {"finance": 201},
                                  {"uscc": make_uscc(150), "name": "新企业", "eligible": True}),
    "GET /v1/enterprises": Route("/v1/enterprises", {"finance": 200}),
    "GET /v1/enterprises/<uscc>": Route(
        f"/v1/enterprises/{U0}", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "PATCH /v1/enterprises/<uscc>": Route(f"/v1/enterprises/{U0}", {"finance": 200}, {"county": "秀洲区"}),
    "POST /v1/enterprises/<uscc>/model-filings": Route(
        f"/v1/enterprises/{U0}/model-filings", {"finance": 201},
        {"filing_no": "Zhejiang-2026-9", "model_name": "m", "obtained_on": "2026-02-01"}),
    "GET /v1/enterprises/<uscc>/model-filings": Route(
        f"/v1/enterprises/{U0}/model-filings", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    # usage records
    "POST /v1/usage-records": Route(  # each provider pushes its own: no other subject involved
        "/v1/usage-records", {"other_provider": 200, "provider": 200},
        {"records": [record(99, U0, record_id="pushed")]}),
    "GET /v1/usage-records": Route(
        f"/v1/usage-records?provider=prov-a&enterprise={U0}",
        {"other_provider": 404, "other_enterprise": 404, "provider": 200, "enterprise": 200,
         "finance": 200}),
    "GET /v1/usage-records/<path:record_id>": Route(
        "/v1/usage-records/own?provider=prov-a", {"other_provider": 404, "provider": 200, "finance": 200}),
    "DELETE /v1/usage-records/<path:record_id>": Route(
        "/v1/usage-records/to-void?provider=prov-a", {"other_provider": 404, "provider": 200, "finance": 200}),
    # billing
    "POST /v1/provider-invoices": Route(
        "/v1/provider-invoices", {"other_provider": 403, "provider": 201, "finance": 200},
        {"invoice_no": "INV-9", "enterprise_uscc": U0, "period": PERIOD, "amount": 500,
         "issued_on": "2026-09-28", "provider_id": "prov-a"}),
    "GET /v1/provider-invoices": Route(
        f"/v1/provider-invoices?provider=prov-a&enterprise={U0}",
        {"other_provider": 404, "other_enterprise": 404, "provider": 200, "enterprise": 200,
         "finance": 200}),
    "POST /v1/claims": Route(
        "/v1/claims", {"other_enterprise": 403, "enterprise": 201, "finance": 201},
        {"period": PERIOD, "enterprise_uscc": U0,
         "items": [{"provider_id": "prov-a", "invoice_no": "INV-1", "amount_paid": 20_000}]}),
    "GET /v1/claims": Route(f"/v1/claims?enterprise={U0}",
                            {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "GET /v1/claims/<claim_id>": Route("/v1/claims/{claim}",
                                       {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "POST /v1/claims/<claim_id>/approve": Route("/v1/claims/{claim}/approve", {"finance": 200}, {}),
    "POST /v1/claims/<claim_id>/reject": Route("/v1/claims/{claim_to_reject}/reject", {"finance": 200},
                                               {"reason": "duplicate"}),
    "GET /v1/enterprises/<uscc>/quota": Route(
        f"/v1/enterprises/{U0}/quota?year=2026", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "POST /v1/reconciliations": Route("/v1/reconciliations", {"finance": 200}, {"period": PERIOD}),
    "GET /v1/reconciliations/<period>": Route(f"/v1/reconciliations/{PERIOD}", {"finance": 200}),
    # A month without claims, so the other routes' period stays open.
    "POST /v1/reconciliations/<period>/close": Route("/v1/reconciliations/2026-08/close", {"finance": 200}, {}),
    "GET /v1/reconciliations/<period>/report.csv": Route(f"/v1/reconciliations/{PERIOD}/report.csv",
                                                         {"finance": 200}),
    "GET /v1/reconciliations/<period>/report.xlsx": Route(f"/v1/reconciliations/{PERIOD}/report.xlsx",
                                                          {"finance": 200}),
    # redemptions (核销): a provider its own, an enterprise those on its quota, finance all
    "POST /v1/redemptions": Route(
        "/v1/redemptions", {"other_provider": 201, "provider": 200},
        {"enterprise_uscc": U0, "reference": "order-1", "list_amount": 10_000, "period": PERIOD}),
    "GET /v1/redemptions": Route(f"/v1/redemptions?enterprise={U0}",
                                 {"other_provider": 200, "other_enterprise": 404, "provider": 200,
                                  "enterprise": 200, "finance": 200}),
    "GET /v1/redemptions/<redemption_id>": Route(
        "/v1/redemptions/{redemption}", {"other_provider": 404, "other_enterprise": 404, "provider": 200,
                                         "enterprise": 200, "finance": 200}),
    "POST /v1/redemptions/<redemption_id>/capture": Route(
        "/v1/redemptions/{redemption}/capture", {"other_provider": 404, "provider": 200},
        {"invoice_no": "INV-R", "amount": 10_000}),
    "POST /v1/redemptions/<redemption_id>/void": Route(
        "/v1/redemptions/{redemption_to_void}/void", {"other_provider": 404, "provider": 200, "finance": 200}),
    "POST /v1/redemptions/<redemption_id>/approve": Route(
        "/v1/redemptions/{redemption}/approve", {"finance": 409}, {"reason": "checked"}),
    "POST /v1/redemptions/<redemption_id>/reject": Route(
        "/v1/redemptions/{redemption_to_reject}/reject", {"finance": 200}, {"reason": "duplicate"}),
    "POST /v1/settlements": Route("/v1/settlements", {"finance": 200}, {"quarter": "2026Q3"}),
    "GET /v1/settlements": Route("/v1/settlements", {"other_provider": 200, "provider": 200, "finance": 200}),
    "GET /v1/settlements/<settlement_id>": Route("/v1/settlements/{settlement}",
                                                 {"other_provider": 404, "provider": 200, "finance": 200}),
    "POST /v1/settlements/<settlement_id>/approve": Route("/v1/settlements/{settlement}/approve",
                                                          {"finance": 200}, {}),
    "GET /v1/settlements/<settlement_id>/payment.csv": Route("/v1/settlements/{settlement}/payment.csv",
                                                             {"finance": 200}),
    "GET /v1/settlements/<settlement_id>/payment.xlsx": Route("/v1/settlements/{settlement}/payment.xlsx",
                                                              {"finance": 200}),
    # risk registries (docs/API.md#risk-registries)
    "POST /v1/contracts": Route(  # a provider registers its own; finance must name provider_id
        "/v1/contracts", {"other_provider": 201, "provider": 201, "finance": 422},
        {"enterprise_uscc": U0, "contract_no": "C-9", "signed_on": "2026-09-01", "valid_from": "2026-09-01",
         "valid_until": "2026-12-31"}),
    "GET /v1/contracts": Route("/v1/contracts", {c: 200 for c in CALLERS[2:]}),
    "POST /v1/contracts/<contract_id>/confirm": Route(
        "/v1/contracts/{contract}/confirm", {"other_enterprise": 404, "enterprise": 200}),
    "POST /v1/providers/<provider_id>/prices": Route(
        "/v1/providers/prov-a/prices", {"finance": 201},
        {"resource": "gpu.h800", "unit": "gpu_hour", "unit_price": 1000, "effective_from": "2026-01-01"}),
    "GET /v1/providers/<provider_id>/prices": Route(
        "/v1/providers/prov-a/prices", {"other_provider": 404, "provider": 200, "finance": 200}),
    "POST /v1/related-parties": Route("/v1/related-parties", {"finance": 201},
                                      {"provider_id": "prov-b", "enterprise_uscc": U1, "relation": "同一实际控制人"}),
    "GET /v1/related-parties": Route("/v1/related-parties", {"finance": 200}),
    # events and webhooks: each role its own; another subject's endpoint is a 404, as is
    # another role's (an endpoint belongs to its key's role and subject)
    "GET /v1/events": Route("/v1/events", {c: 200 for c in CALLERS[2:]}),
    "GET /v1/events/<event_id>": Route(
        "/v1/events/{event}", {"other_provider": 404, "other_enterprise": 404, "provider": 404,
                               "enterprise": 200, "finance": 200}),
    "POST /v1/webhook-endpoints": Route("/v1/webhook-endpoints", {c: 201 for c in CALLERS[2:]},
                                        {"url": "http://127.0.0.1:9/hooks", "events": ["claim.approved"]}),
    "GET /v1/webhook-endpoints": Route("/v1/webhook-endpoints", {c: 200 for c in CALLERS[2:]}),
    "GET /v1/webhook-endpoints/<endpoint_id>": Route("/v1/webhook-endpoints/{endpoint}", OWN_ENDPOINT),
    "DELETE /v1/webhook-endpoints/<endpoint_id>": Route("/v1/webhook-endpoints/{spare_endpoint}",
                                                        OWN_ENDPOINT),
    "GET /v1/webhook-endpoints/<endpoint_id>/deliveries": Route(
        "/v1/webhook-endpoints/{endpoint}/deliveries", OWN_ENDPOINT),
    "POST /v1/webhook-endpoints/<endpoint_id>/deliveries/<delivery_id>/retry": Route(
        "/v1/webhook-endpoints/{endpoint}/deliveries/{delivery}/retry", OWN_ENDPOINT),
}


# --- the console: cookie sessions signed in with the same keys ---------------------------------
# "login" is a redirect to the sign-in page; an int is the status. Routes whose view has
# `roles` (console.security.login_required) get "login" for callers without a session and
# 403 for a role outside `roles`, derived as for the API; the table gives the rest. Public
# console routes list every caller.
LOGIN = "login"
SIGNED_IN = ("other_provider", "other_enterprise", "provider", "enterprise", "finance")


def everyone(status: int | str, **but: int | str) -> dict[str, int | str]:
    return {caller: but.get(caller, status) for caller in CALLERS}


@dataclass(frozen=True)
class Page:
    url: str
    expect: dict[str, int | str]
    form: dict[str, str] | None = None


CONSOLE: dict[str, Page] = {
    "GET /console/": Page("/console/", {c: 302 for c in SIGNED_IN}),
    "GET /console/sign-in": Page("/console/sign-in", everyone(302, none=200, wrong=200)),
    "POST /console/sign-in": Page("/console/sign-in", everyone(401), {"api_key": ""}),
    "POST /console/sign-out": Page("/console/sign-out", everyone(302)),
    "GET /console/static/<path:filename>": Page("/console/static/console.css", everyone(200)),
    "GET /console/<path:_anything>": Page("/console/no-such-page", everyone(404)),
    "POST /console/<path:_anything>": Page("/console/no-such-page", everyone(404)),
    "GET /console/claims/<claim_id>": Page(
        "/console/claims/{claim}", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "POST /console/claims/<claim_id>/approve": Page("/console/claims/{claim}/approve", {"finance": 302}),
    "POST /console/claims/<claim_id>/reject": Page("/console/claims/{claim_to_reject}/reject",
                                                   {"finance": 302}, {"reason": "duplicate"}),
    "GET /console/enterprises/<uscc>": Page(
        f"/console/enterprises/{U0}", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "GET /console/enterprises/<uscc>/claims/new": Page(
        f"/console/enterprises/{U0}/claims/new", {"other_enterprise": 404, "enterprise": 200, "finance": 200}),
    "POST /console/enterprises/<uscc>/claims/new": Page(  # an empty form: refused, but reached
        f"/console/enterprises/{U0}/claims/new", {"other_enterprise": 404, "enterprise": 422, "finance": 422}),
    "GET /console/providers/<provider_id>": Page(
        "/console/providers/prov-a", {"other_provider": 404, "provider": 200, "finance": 200}),
    "POST /console/providers/<provider_id>/upload": Page(  # no file: refused, but reached
        "/console/providers/prov-a/upload", {"other_provider": 404, "provider": 422}),
    # risk review (docs/API.md#risk, #risk-registries): forms answer with a redirect (PRG)
    "GET /console/reconciliations/<period>/risk": Page(f"/console/reconciliations/{PERIOD}/risk", {"finance": 200}),
    "GET /console/contracts": Page("/console/contracts", {c: 200 for c in SIGNED_IN}),
    "POST /console/contracts": Page(
        "/console/contracts", {"other_provider": 302, "provider": 302},
        {"enterprise_uscc": U0, "contract_no": "C-console", "signed_on": "2026-09-01",
         "valid_from": "2026-09-01", "valid_until": "2026-12-31"}),
    "POST /console/contracts/<contract_id>/confirm": Page(
        "/console/contracts/{contract}/confirm", {"other_enterprise": 404, "enterprise": 302}),
    "GET /console/risk-registry": Page("/console/risk-registry", {"finance": 200}),
    "POST /console/prices": Page("/console/prices", {"finance": 302},
                                 {"provider_id": "prov-a", "resource": "gpu", "unit": "gpu_hour",
                                  "unit_price": "8.00", "effective_from": "2026-01-01"}),
    "POST /console/related-parties": Page("/console/related-parties", {"finance": 302},
                                          {"provider_id": "prov-b", "enterprise_uscc": U1, "relation": "x"}),
    "POST /console/providers/<provider_id>/redemptions": Page(
        "/console/providers/prov-a/redemptions", {"other_provider": 404, "provider": 302},
        {"enterprise_uscc": U0, "reference": "console-1", "list_amount": "10", "period": PERIOD}),
    "POST /console/redemptions/<redemption_id>/capture": Page(
        "/console/redemptions/{redemption}/capture", {"other_provider": 404, "provider": 302},
        {"invoice_no": "INV-C", "amount": "100"}),
    "GET /console/settlements": Page("/console/settlements", {"finance": 200}),
    "POST /console/settlements/<settlement_id>/approve": Page("/console/settlements/{settlement}/approve",
                                                              {"finance": 302}),
    "GET /console/jobs": Page("/console/jobs", {"finance": 200}),
    "GET /console/quotas": Page("/console/quotas", {"finance": 200}),
    "GET /console/budget": Page("/console/budget", {"finance": 200}),
    "GET /console/simulation": Page("/console/simulation", {"finance": 200}),
    "POST /console/simulation": Page("/console/simulation", {"finance": 200},
                                     {"policy": "jiaxing-2025.toml", "year": "2026", "action": "show"}),
    "GET /console/registry": Page("/console/registry", {"finance": 200}),
    "GET /console/reconciliations": Page("/console/reconciliations?list=1", {"finance": 200}),
    "POST /console/reconciliations": Page("/console/reconciliations", {"finance": 302}, {"period": PERIOD}),
    "GET /console/reconciliations/<period>": Page(f"/console/reconciliations/{PERIOD}", {"finance": 200}),
    "POST /console/reconciliations/<period>/close": Page("/console/reconciliations/2026-07/close", {"finance": 302}),
    "GET /console/reconciliations/<period>/report.<fmt>": Page(
        f"/console/reconciliations/{PERIOD}/report.csv", {"finance": 200}),
}


def routes(app) -> list[tuple[str, Any, Any]]:
    out = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((f"{method} {rule.rule}", rule, app.view_functions[rule.endpoint]))
    return out


@pytest.fixture
def world(db, settings):
    # Many wrong keys from one address are the point here, not an attack.
    app = create_app(settings.with_(auth_fail_limit=0), database=db)
    client = app.test_client()
    finance = Api(client, new_key(db, "finance"))
    setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    keys = {"none": None, "wrong": WRONG_KEY, "finance": finance.key,
            "provider": new_key(db, "provider", "prov-a"), "other_provider": new_key(db, "provider", "prov-b"),
            "enterprise": new_key(db, "enterprise", U0), "other_enterprise": new_key(db, "enterprise", U1)}
    prov, ent = Api(client, keys["provider"]), Api(client, keys["enterprise"])
    usage(prov, U0, 20_000, period=PERIOD, rid="own")
    usage(prov, U0, 5, period=PERIOD, rid="to-void")
    invoice(prov, "INV-1", U0, 20_000, period=PERIOD)
    invoice(prov, "INV-2", U0, 1_000, period=PERIOD)
    ids = {"claim": claim(ent, [("prov-a", "INV-1", 20_000)], period=PERIOD),
           "claim_to_reject": claim(ent, [("prov-a", "INV-2", 1_000)], period=PERIOD),
           "spare_key": finance.post("/v1/api-keys", json={"role": "finance"}).json["id"],
           "contract": prov.post("/v1/contracts", json={
               "enterprise_uscc": U0, "contract_no": "C-1", "signed_on": "2026-09-01",
               "valid_from": "2026-09-01", "valid_until": "2026-12-31"}).json["id"]}
    rdm = [prov.post("/v1/redemptions", json={"enterprise_uscc": U0, "reference": ref, "list_amount": amount,
                                               "period": PERIOD}).json["id"]
           for ref, amount in (("order-1", 10_000), ("o-2", 10_000), ("o-3", 10_000), ("o-4", 20_005))]
    invoice(prov, "INV-R4", U0, 20_005, period=PERIOD)  # with the metered 20,005 fen: a clean capture
    ids["redemption"], ids["redemption_to_void"], ids["redemption_to_reject"] = rdm[:3]
    prov.post(f"/v1/redemptions/{rdm[2]}/capture", json={"invoice_no": "INV-X", "amount": 10_000})
    prov.post(f"/v1/redemptions/{rdm[3]}/capture", json={"invoice_no": "INV-R4", "amount": 20_005})
    hooks = [ent.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks", "events": ["*"]})
             for _ in range(2)]
    ids["endpoint"], ids["spare_endpoint"] = (h.json["id"] for h in hooks)
    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    # an event of the enterprise's alone (a redemption's event is its provider's too)
    ids["event"] = next(e["id"] for e in ent.get("/v1/events?limit=1000").json["data"]
                        if not e["type"].startswith("redemption."))
    built = finance.post("/v1/settlements", json={"quarter": "2026Q3"}).json["data"]
    ids["settlement"] = built[0]["id"]
    ids["delivery"] = ent.get(f"/v1/webhook-endpoints/{ids['endpoint']}/deliveries").json["data"][0]["id"]

    from api.schemas import JobRun
    from kernel import jobruns as jobs

    with db.session() as s:
        ids["job_run"] = JobRun.dump(jobs.claim(s, "reconcile", PERIOD, "test"))["id"]
    static = Path(app.static_folder or "")
    files = [p for p in static.rglob("*") if p.is_file()] if static.is_dir() else []
    ids["static_file"] = files[0].relative_to(static).as_posix() if files else "none.txt"
    ids["static_status"] = 200 if files else 404
    return app, client, keys, ids


def test_every_route_answers_every_caller_as_expected(world):
    app, client, keys, ids = world
    missing, unprotected, wrong = [], [], []
    for name, rule, view in routes(app):
        if rule.rule.startswith("/console"):
            continue  # cookie sessions: test_every_console_page_answers_every_caller_as_expected
        spec = EXPECT.get(name)
        if spec is None:
            missing.append(name)
            continue
        roles = getattr(view, "roles", None)
        method = name.split()[0]
        if isinstance(spec, Public):
            if roles:
                wrong.append(f"{name}: listed as public but requires {roles}")
            status = spec.status or ids["static_status"]
            expected = {caller: status for caller in CALLERS}
        else:
            if not roles:
                unprotected.append(name)
                continue
            expected = {}
            for caller in CALLERS:
                role = ROLE_OF[caller]
                if role is None:
                    expected[caller] = 401
                elif role not in roles:
                    expected[caller] = 403
                elif caller in spec.expect:
                    expected[caller] = spec.expect[caller]
                else:
                    wrong.append(f"{name}: the table says nothing about {caller} (role {role} may call it)")
            stray = set(spec.expect) - {c for c in CALLERS if ROLE_OF[c] in roles}
            if stray:
                wrong.append(f"{name}: the table expects {sorted(stray)} but their role may not call it")
        url = spec.url.format(**ids)
        for caller, status in expected.items():
            api = Api(client, keys[caller])
            kwargs = {"json": spec.body} if isinstance(spec, Route) and spec.body is not None else {}
            r = getattr(api, method.lower())(url, **kwargs)
            if r.status_code != status:
                wrong.append(f"{name} as {caller}: {r.status_code} (expected {status}) "
                             f"{r.get_data(as_text=True)[:200]}")
                continue
            if status >= 400 and not (rule.rule.startswith("/static") and status == 404):
                err = r.json["error"]
                kind = {401: "authentication_error", 403: "permission_error"}.get(status)
                if kind and err["type"] != kind:
                    wrong.append(f"{name} as {caller}: error type {err['type']}")
                if status == 401 and r.headers.get("WWW-Authenticate") != "Bearer":
                    wrong.append(f"{name} as {caller}: 401 without WWW-Authenticate: Bearer")
    assert not missing, f"routes missing from the authorisation table: {missing}"
    assert not unprotected, f"routes without @requires and not listed as public: {unprotected}"
    assert not wrong, "\n".join(wrong)


def test_stale_table_entries_name_real_routes(app):
    """Every line of the table is a route of the app (a renamed route must move its line)."""
    names = {name for name, _, _ in routes(app)}
    assert set(EXPECT) | set(CONSOLE) <= names, sorted((set(EXPECT) | set(CONSOLE)) - names)


def console_clients(app, keys) -> dict[str, Any]:
    """One cookie jar per caller, signed in through the sign-in form with the caller's key."""
    clients = {}
    for caller in CALLERS:
        c = app.test_client()
        c.get("/console/sign-in")  # the session's CSRF token
        if keys[caller]:
            r = c.post("/console/sign-in", data={"api_key": keys[caller], "csrf_token": csrf(c)})
            assert r.status_code == (401 if caller == "wrong" else 302), (caller, r.status_code)
        clients[caller] = c
    return clients


def csrf(client) -> str:
    with client.session_transaction("/console/") as sess:  # the cookie lives under /console
        return sess.get("csrf", "")


def test_every_console_page_answers_every_caller_as_expected(world):
    app, _, keys, ids = world
    clients = console_clients(app, keys)
    missing, wrong = [], []
    console = [(n, r, v) for n, r, v in routes(app) if r.rule.startswith("/console")]
    console.sort(key=lambda x: x[0] == "POST /console/sign-out")  # it ends the sessions: last
    for name, _rule, view in console:
        page = CONSOLE.get(name)
        if page is None:
            missing.append(name)
            continue
        expected: dict[str, int | str] = {}
        if hasattr(view, "roles"):  # login_required(*roles); () is any signed-in caller
            for caller in CALLERS:
                role = ROLE_OF[caller]
                if role is None:
                    expected[caller] = LOGIN
                elif view.roles and role not in view.roles:
                    expected[caller] = 403
                elif caller in page.expect:
                    expected[caller] = page.expect[caller]
                else:
                    wrong.append(f"{name}: the table says nothing about {caller}")
        else:
            expected = dict(page.expect)
            if set(expected) != set(CALLERS):
                wrong.append(f"{name}: a public page must list every caller")
        url = page.url.format(**ids)
        method = name.split()[0]
        for caller, want in expected.items():
            c = clients[caller]
            if method == "POST":
                r = c.post(url, data={**(page.form or {}), "csrf_token": csrf(c)})
            else:
                r = c.get(url)
            got: int | str = r.status_code
            if got == 302 and "/console/sign-in" in r.headers.get("Location", "") and want == LOGIN:
                got = LOGIN
            if got != want:
                wrong.append(f"{name} as {caller}: {got} (expected {want}) {r.headers.get('Location', '')}")
    assert not missing, f"console routes missing from the authorisation table: {missing}"
    assert not wrong, "\n".join(wrong)


def test_console_posts_without_the_session_token_are_refused(world):
    app, _, keys, ids = world
    clients = console_clients(app, keys)
    r = clients["finance"].post(f"/console/claims/{ids['claim']}/approve", data={})
    assert r.status_code == 400
    r = clients["finance"].get(f"/console/claims/{ids['claim']}")
    assert r.status_code == 200 and "approved" not in r.get_data(as_text=True).lower()
