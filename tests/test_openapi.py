"""The OpenAPI document: valid 3.1, complete, and true to what the API answers."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate

from api.openapi import build_spec, excluded, openapi_path, operation_doc, undocumented
from api.registry import EnterpriseIn, FilingIn, ProviderIn
from api.schemas import UsageBatchIn
from metering.records import UsageRecordIn
from voucher.app import create_app

EXAMPLE_USCC = "91330402MA2B7K3X13"


@pytest.fixture
def spec(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json


def response_schema(spec, path, method, status, content_type="application/json"):
    op = spec["paths"][path][method]
    assert str(status) in op["responses"], f"{method.upper()} {path} does not document {status}"
    schema = op["responses"][str(status)]["content"][content_type]["schema"]
    # $refs point into the document's components; keep them resolvable from this root.
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": spec["components"], **schema}


def check(spec, path, method, resp):
    """The real answer validates against what the document says for its status."""
    schema = response_schema(spec, path, method, resp.status_code)
    jsonschema.Draft202012Validator(schema).validate(resp.json)


def test_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # openapi-spec-validator picks the 3.1 schema from the version field


def test_every_route_is_documented_with_a_summary(app, spec):
    assert undocumented(app) == [], "add @doc(...) (api.openapi) or a docstring to these views"
    for rule in app.url_map.iter_rules():
        if excluded(app, rule.endpoint):  # static files and the HTML console only
            assert rule.endpoint.endswith("static") or rule.rule.startswith("/console"), rule.rule
            continue
        path, _ = openapi_path(rule.rule)
        assert path in spec["paths"], rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = spec["paths"][path][method.lower()]
            assert op.get("summary"), f"{method} {rule.rule} has no summary"
            assert op["responses"], f"{method} {rule.rule} has no responses"


def test_a_route_added_without_description_is_reported(app):
    def undocumented_view():
        return {}

    before = set(undocumented(app))
    app.add_url_rule("/v1/undocumented", "undocumented", undocumented_view, methods=["GET", "POST"])
    assert set(undocumented(app)) - before == {"GET /v1/undocumented", "POST /v1/undocumented"}
    spec = build_spec(app)
    assert "summary" not in spec["paths"]["/v1/undocumented"]["get"]


def test_docstring_first_line_is_the_fallback_summary(app):
    def described():
        """List the widgets.

        More words."""
        return {}

    before = set(undocumented(app))
    app.add_url_rule("/v1/widgets", "widgets", described)
    assert set(undocumented(app)) == before
    op = build_spec(app)["paths"]["/v1/widgets"]["get"]
    assert op["summary"] == "List the widgets."
    assert op["description"] == "More words."
    assert operation_doc(described).summary == "List the widgets."


def test_request_bodies_are_the_models_that_validate_requests(spec):
    schemas = spec["components"]["schemas"]
    for model in (ProviderIn, EnterpriseIn, FilingIn, UsageBatchIn, UsageRecordIn):
        assert model.__name__ in schemas, model.__name__
    body = spec["paths"]["/v1/providers"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ProviderIn"}
    assert schemas["ProviderIn"]["properties"]["id"]["pattern"] == ProviderIn.model_fields["id"].metadata[0].pattern
    batch = schemas["UsageBatchIn"]["properties"]["records"]
    assert batch["items"] == {"$ref": "#/components/schemas/UsageRecordIn"}


def test_security_follows_the_roles_of_each_view(spec):
    push = spec["paths"]["/v1/usage-records"]["post"]
    assert push["security"] == [{"bearer": []}]
    assert "`provider`" in push["description"]
    assert {"401", "403", "422", "409"} <= set(push["responses"])
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    record = spec["paths"]["/v1/usage-records/{record_id}"]["get"]
    assert {"name": "record_id", "in": "path", "required": True,
            "schema": {"type": "string"}} in record["parameters"]


def test_every_request_body_has_an_example_its_model_accepts(app, spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody")
            if not body:
                continue
            media = body["content"]["application/json"]
            assert "example" in media, f"{method.upper()} {path} has no request example"
            rule = next(r for r in app.url_map.iter_rules()
                        if openapi_path(r.rule)[0] == path and method.upper() in r.methods)
            model = operation_doc(app.view_functions[rule.endpoint]).request
            model.model_validate(media["example"])


def test_examples_work_against_the_real_api_and_answers_match_the_document(spec, finance, as_key, client):
    def example(path, method="post"):
        return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]

    r = finance.post("/v1/providers", json=example("/v1/providers"))
    assert r.status_code == 201, r.json
    check(spec, "/v1/providers", "post", r)
    provider_id = r.json["id"]
    r = finance.post("/v1/enterprises", json=example("/v1/enterprises"))
    assert r.status_code == 201, r.json
    check(spec, "/v1/enterprises", "post", r)
    assert r.json["uscc"] == EXAMPLE_USCC
    r = finance.post(f"/v1/enterprises/{EXAMPLE_USCC}/model-filings",
                     json=example("/v1/enterprises/{uscc}/model-filings"))
    assert r.status_code == 201, r.json
    check(spec, "/v1/enterprises/{uscc}/model-filings", "post", r)
    r = finance.post(f"/v1/enterprises/{EXAMPLE_USCC}/model-filings",
                     json=example("/v1/enterprises/{uscc}/model-filings"))
    assert r.status_code == 200
    check(spec, "/v1/enterprises/{uscc}/model-filings", "post", r)
    r = finance.post("/v1/api-keys", json=example("/v1/api-keys"))
    assert r.status_code == 201, r.json
    check(spec, "/v1/api-keys", "post", r)
    key_id = r.json["id"]

    provider = as_key("provider", provider_id)
    r = provider.post("/v1/usage-records", json=example("/v1/usage-records"))
    assert r.status_code == 200 and r.json["accepted"] == 1, r.json
    check(spec, "/v1/usage-records", "post", r)
    bad = example("/v1/usage-records")["records"][0] | {"record_id": "x2", "ended_at": "2026-10-15T10:00:00"}
    r = provider.post("/v1/usage-records", json={"records": [bad]})
    assert r.json["results"][0]["status"] == "rejected"
    check(spec, "/v1/usage-records", "post", r)

    reads = [
        (finance.get("/v1/providers"), "/v1/providers", "get"),
        (finance.get(f"/v1/providers/{provider_id}"), "/v1/providers/{provider_id}", "get"),
        (finance.patch(f"/v1/providers/{provider_id}", json=example("/v1/providers/{provider_id}", "patch")),
         "/v1/providers/{provider_id}", "patch"),
        (finance.get("/v1/enterprises"), "/v1/enterprises", "get"),
        (finance.get(f"/v1/enterprises/{EXAMPLE_USCC}"), "/v1/enterprises/{uscc}", "get"),
        (finance.patch(f"/v1/enterprises/{EXAMPLE_USCC}", json={"county": "秀洲区"}),
         "/v1/enterprises/{uscc}", "patch"),
        (finance.get(f"/v1/enterprises/{EXAMPLE_USCC}/model-filings"),
         "/v1/enterprises/{uscc}/model-filings", "get"),
        (provider.get("/v1/usage-records"), "/v1/usage-records", "get"),
        (provider.get("/v1/usage-records/job-4103947-1"), "/v1/usage-records/{record_id}", "get"),
        (provider.delete("/v1/usage-records/job-4103947-1", json={"reason": "test"}),
         "/v1/usage-records/{record_id}", "delete"),
        (finance.delete(f"/v1/api-keys/{key_id}"), "/v1/api-keys/{key_id}", "delete"),
        (client.get("/healthz"), "/healthz", "get"),
        (client.get("/readyz"), "/readyz", "get"),
        # Errors are documented too, with the error body.
        (finance.get("/v1/providers/nope"), "/v1/providers/{provider_id}", "get"),
        (finance.post("/v1/providers", json={"id": "x"}), "/v1/providers", "post"),
        (client.get("/v1/providers"), "/v1/providers", "get"),
        (provider.get("/v1/providers"), "/v1/providers", "get"),
        (finance.post("/v1/providers", json=example("/v1/providers")), "/v1/providers", "post"),
    ]
    statuses = set()
    for resp, path, method in reads:
        assert resp.status_code < 500, (path, resp.json)
        check(spec, path, method, resp)
        statuses.add(resp.status_code)
    assert {200, 401, 403, 404, 409, 422} <= statuses


def test_docs_page_is_self_contained_and_lists_every_operation(client, spec):
    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in page, path
    # Nothing is fetched from another host: no scripts, styles, fonts or images from a URL.
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"@import|url\(", page)


def test_document_is_built_once_per_app(app):
    with app.test_client() as c:
        first = c.get("/openapi.json").json
    assert build_spec(app) == first
    assert create_app is not None


def test_html_blueprints_can_be_left_out_of_the_document(app):
    from api.openapi import exclude_blueprints

    assert "/v1/providers" in build_spec(app)["paths"]
    exclude_blueprints(app, "registry")
    spec = build_spec(app)
    assert "/v1/providers" not in spec["paths"] and "/v1/usage-records" in spec["paths"]
    assert not any(p.startswith("/console") for p in spec["paths"])
