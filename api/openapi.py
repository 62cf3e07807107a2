"""OpenAPI 3.1 description of the whole API, built from the app's URL map.

Each view carries its documentation with `@doc(...)`: a summary, the pydantic model that
validates its body (the same one `api.http.parse_model` uses, so the description cannot
drift from the validation), the response model, query parameters and tags. Who may call it
comes from `@requires(...)` (`view.roles`). A view without `@doc` falls back to the first
line of its docstring; `undocumented(app)` lists the operations with neither, and a test
keeps that list empty.

`/openapi.json` serves the document and `/docs` a plain HTML reference rendered from it on
the server: no script, no font, nothing fetched from another host.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas.base import ErrorBody, list_of

REF = "#/components/schemas/{model}"
SKIP_METHODS = {"HEAD", "OPTIONS"}
_RULE_ARG = re.compile(r"<(?:(?P<conv>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>.*?)\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_CONVERTER_SCHEMAS = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}
STATUS_TEXT = {
    200: "OK", 201: "Created", 400: "Malformed request", 401: "Missing, unknown or revoked API key",
    403: "The key's role may not do this", 404: "No such resource (or not yours)",
    409: "Conflicts with what is stored", 413: "Request too large",
    422: "Well-formed but invalid; `param` names the field",
    429: "Too many failed authentications from this address; retry after Retry-After seconds",
    503: "Database unavailable; retry after Retry-After seconds",
}


@dataclass(frozen=True)
class Param:
    """A query (or header) parameter of an operation."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    location: str = "query"
    example: Any = None

    def as_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.location, "required": self.required,
                               "description": self.description, "schema": self.schema}
        if self.example is not None:
            out["example"] = self.example
        return out


def query(name: str, description: str, type: str = "string", example: Any = None,
          required: bool = False, **schema: Any) -> Param:
    return Param(name, description, {"type": type, **schema}, required, "query", example)


PAGE = (
    query("limit", "Page size", "integer", minimum=1, maximum=1000, default=100),
    query("starting_after", "Cursor: the `id` of the last object of the previous page"),
)


# `ListOf(Provider)`: the list envelope `{object: "list", data: [...], has_more}` of a model,
# the same class `Provider.page(...)` answers with.
ListOf = list_of


@dataclass
class OperationDoc:
    summary: str
    description: str | None = None
    request: type[BaseModel] | None = None
    request_required: bool = True
    response: type[BaseModel] | dict | None = None
    status: int = 200
    query: tuple[Param, ...] = ()
    tags: tuple[str, ...] = ()
    example: Any = None
    errors: dict[int, str] = field(default_factory=dict)
    response_content_type: str = "application/json"
    operation_id: str | None = None
    also: dict[int, str] = field(default_factory=dict)


def doc(summary: str, *, description: str | None = None, request: type[BaseModel] | None = None,
        request_required: bool = True, response: type[BaseModel] | dict | None = None,
        status: int = 200, query: Iterable[Param] = (), tags: Iterable[str] = (),
        example: Any = None, errors: dict[int, str] | None = None,
        response_content_type: str = "application/json",
        operation_id: str | None = None, also: dict[int, str] | None = None) -> Callable:
    """Attach OpenAPI metadata to a view; place it above or below `@bp.<method>`/`@requires`.

    request: the pydantic model the view validates its body with (its `model_json_schema`
    becomes the request schema); example: a request body example (defaults to the model's
    `examples`); errors: extra error statuses the view answers, {409: "why"}; also: other
    success statuses with the same body, {200: "the same filing again"}.
    """
    meta = OperationDoc(summary, description, request, request_required, response, status,
                        tuple(query), tuple(tags), example, dict(errors or {}),
                        response_content_type, operation_id, dict(also or {}))

    def attach(view: Callable) -> Callable:
        view.__openapi__ = meta  # type: ignore[attr-defined]
        return view

    return attach


def operation_doc(view: Callable) -> OperationDoc | None:
    """The view's @doc, else a summary from its docstring's first line, else None."""
    meta = getattr(view, "__openapi__", None)
    if meta is not None:
        return meta
    text = (getattr(view, "__doc__", None) or "").strip()
    if text:
        first, _, rest = text.partition("\n")
        return OperationDoc(first.strip(), rest.strip() or None)
    return None


# Blueprints of HTML pages for people, not part of the JSON API (the finance console).
DEFAULT_EXCLUDED = frozenset({"console"})


def exclude_blueprints(app: Flask, *names: str) -> None:
    """Leave these blueprints' routes out of the document (HTML pages, not API)."""
    app.extensions.setdefault("voucher.openapi.exclude", set(DEFAULT_EXCLUDED)).update(names)
    app.extensions.pop("voucher.openapi", None)


def excluded(app: Flask, endpoint: str) -> bool:
    if endpoint == "static" or endpoint.endswith(".static"):
        return True
    blueprint, dot, _ = endpoint.rpartition(".")
    return bool(dot) and blueprint.split(".")[0] in app.extensions.get(
        "voucher.openapi.exclude", DEFAULT_EXCLUDED)


def _operations(app: Flask):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if excluded(app, rule.endpoint):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - SKIP_METHODS):
            yield rule, method, view


def undocumented(app: Flask) -> list[str]:
    """`METHOD /rule` of every operation that has neither @doc nor a docstring."""
    return [f"{m} {r.rule}" for r, m, v in _operations(app) if operation_doc(v) is None
            or not operation_doc(v).summary]


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """Flask's `/v1/x/<path:id>` as `/v1/x/{id}` with its path parameters."""
    params = []
    for m in _RULE_ARG.finditer(rule):
        schema = dict(_CONVERTER_SCHEMAS.get(m.group("conv") or "", {"type": "string"}))
        params.append({"name": m.group("name"), "in": "path", "required": True, "schema": schema})
    return _RULE_ARG.sub(lambda m: "{" + m.group("name") + "}", rule), params


def _error_ref() -> dict[str, Any]:
    return {"$ref": REF.format(model="ErrorBody")}


def build_spec(app: Flask) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], str]] = [(ErrorBody, "serialization")]
    ops: list[tuple[str, str, str, OperationDoc | None, Any, list]] = []
    methods_of: dict[str, set[str]] = {}
    for rule, method, view in _operations(app):
        methods_of.setdefault(rule.endpoint, set()).add(method)
        meta = operation_doc(view)
        if meta is not None:
            if meta.request is not None:
                wanted.append((meta.request, "validation"))
            if isinstance(meta.response, type) and issubclass(meta.response, BaseModel):
                wanted.append((meta.response, "serialization"))
        path, path_params = openapi_path(rule.rule)
        ops.append((path, method, rule.endpoint, meta, view, path_params))

    seen: set[tuple[type[BaseModel], str]] = set()
    unique = [w for w in wanted if not (w in seen or seen.add(w))]
    refs, top = models_json_schema(unique, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for path, method, endpoint, meta, view, path_params in ops:
        roles = getattr(view, "roles", None)
        op: dict[str, Any] = {}
        if meta is not None:
            op["summary"] = meta.summary
        description = meta.description if meta and meta.description else ""
        if roles:
            who = "Roles: " + ", ".join(f"`{r}`" for r in roles) + "."
            description = f"{description}\n\n{who}".strip()
        if description:
            op["description"] = description
        op_id = (meta.operation_id if meta and meta.operation_id
                 else _operation_id(endpoint, method, methods_of[endpoint]))
        while op_id in used_ids:  # one view mounted at two URLs
            op_id += "_"
        used_ids.add(op_id)
        op["operationId"] = op_id
        tags = list(meta.tags) if meta and meta.tags else [_default_tag(path)]
        op["tags"] = tags
        params = list(path_params) + [p.as_openapi() for p in (meta.query if meta else ())]
        params.append({"$ref": "#/components/parameters/RequestId"})
        if method == "POST" and roles and path.startswith("/v1/"):
            params.append({"$ref": "#/components/parameters/IdempotencyKey"})
        if params:
            op["parameters"] = params
        op["security"] = [{"bearer": []}] if roles else []
        responses: dict[str, Any] = {}
        if meta is not None and meta.request is not None:
            body_schema = refs[(meta.request, "validation")]
            media: dict[str, Any] = {"schema": body_schema}
            example = meta.example
            if example is None:
                examples = meta.request.model_json_schema().get("examples")
                example = examples[0] if examples else None
            if example is not None:
                media["example"] = example
            op["requestBody"] = {"required": meta.request_required,
                                 "content": {"application/json": media}}
        status = meta.status if meta else 200
        responses[str(status)] = _success(meta, refs, status)
        for code, why in (meta.also.items() if meta else ()):
            responses[str(code)] = {**_success(meta, refs, code), "description": why}
        errors: dict[int, str] = {}
        if meta is not None and meta.request is not None:
            errors.update({400: STATUS_TEXT[400], 422: STATUS_TEXT[422]})
        if roles:
            # Any keyed call may also meet a malformed query, a filter naming another subject
            # (404, as for ids), the failed-authentication limit (api.ratelimit) or a
            # database outage.
            errors.update({400: STATUS_TEXT[400], 401: STATUS_TEXT[401], 403: STATUS_TEXT[403],
                           404: STATUS_TEXT[404], 429: STATUS_TEXT[429], 503: STATUS_TEXT[503]})
        if path_params:
            errors[404] = STATUS_TEXT[404]
        if method == "POST" and roles and path.startswith("/v1/"):
            errors[409] = "Conflict (also: the Idempotency-Key is in use or was used with another body)"
        if meta is not None:
            errors.update(meta.errors)
        for code in sorted(errors):
            responses[str(code)] = {"description": errors[code],
                                    "content": {"application/json": {"schema": _error_ref()}}}
        for resp in responses.values():
            resp["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
        op["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Compute-voucher API (嘉兴算力券)",
            "version": _version(),
            "description": (
                "Metering and subsidy billing for Jiaxing's AI+ compute vouchers. Money is integer "
                "fen beside `currency: CNY`; times are RFC 3339 with an offset; periods are "
                "`YYYY-MM` in Asia/Shanghai. Errors are `{\"error\": {type, code, message, param}}`; "
                "lists are `{object: \"list\", data, has_more}` with `limit` and `starting_after`. "
                "Every response carries `X-Request-Id` (the client's, if it sent a safe one)."),
        },
        "tags": [{"name": t} for t in sorted({t for p in paths.values() for o in p.values()
                                              for t in o["tags"]})],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {
                "RequestId": {"name": "X-Request-Id", "in": "header", "required": False,
                              "description": "Your id for this request (at most 64 of "
                                             "`[A-Za-z0-9._-]`); echoed back and logged. Any other "
                                             "value is replaced by a generated id.",
                              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
                "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": False,
                                   "description": "Retry safely: the same key with the same body "
                                                  "replays the first answer (24 h, per API key).",
                                   "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
            },
            "headers": {
                "RequestId": {"description": "The request's id, as logged",
                              "schema": {"type": "string"}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key: `Authorization: Bearer <key>`"}},
        },
    }


def _operation_id(endpoint: str, method: str, methods: set[str]) -> str:
    """The endpoint name (`usage.push_usage_records`), with the method when a view serves several."""
    name = endpoint.replace(".", "_")
    return name if len(methods) == 1 else f"{name}_{method.lower()}"


def _default_tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    if parts and parts[0] == "v1":
        parts = parts[1:]
    return parts[0] if parts else "service"


def _success(meta: OperationDoc | None, refs: dict, status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": STATUS_TEXT.get(status, "Success")}
    if meta is None or meta.response is None:
        return out
    if isinstance(meta.response, dict):
        schema: dict[str, Any] = meta.response
    else:
        schema = refs[(meta.response, "serialization")]
    out["content"] = {meta.response_content_type: {"schema": schema}}
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("compute-voucher")
    except Exception:  # not installed (a bare checkout)
        return "0.0.0"


def spec_of(app: Flask) -> dict[str, Any]:
    """The app's document, built once (the URL map is fixed after create_app)."""
    spec = app.extensions.get("voucher.openapi")
    if spec is None:
        spec = app.extensions["voucher.openapi"] = build_spec(app)
    return spec


def init_openapi(app: Flask) -> None:
    def openapi_json():
        return jsonify(spec_of(current_app))

    def docs_html():
        response = Response(render_html(spec_of(current_app)), mimetype="text/html")
        # The console's security headers (console/security.py); the page's one inline
        # stylesheet is allowed by its hash, nothing else (no script at all).
        response.headers.update({
            "Content-Security-Policy": DOCS_CSP, "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin"})
        return response

    doc("The OpenAPI 3.1 description of this API", tags=["operations"],
        response={"type": "object", "description": "An OpenAPI 3.1 document"})(openapi_json)
    doc("Human-readable API reference (HTML, rendered from /openapi.json)", tags=["operations"],
        response={"type": "string"}, response_content_type="text/html")(docs_html)
    app.add_url_rule("/openapi.json", "openapi", openapi_json, methods=["GET"])
    app.add_url_rule("/docs", "docs", docs_html, methods=["GET"])


# --- /docs ----------------------------------------------------------------------------------
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC",sans-serif;margin:0;color:#1d2733}
header{background:#123;color:#fff;padding:1.2em 2em}header h1{margin:0;font-size:1.4em}
main{display:flex}nav{width:18em;padding:1em;border-right:1px solid #dde;position:sticky;top:0;
height:100vh;overflow:auto;font-size:.9em}nav a{display:block;color:#235;text-decoration:none;padding:.1em 0}
section.content{flex:1;padding:1em 2em;max-width:70em}.op{border:1px solid #dde;border-radius:6px;
margin:1em 0;padding:.8em 1em}.m{display:inline-block;min-width:4.5em;font-weight:700;font-family:monospace}
.get{color:#1565c0}.post{color:#2e7d32}.patch{color:#ef6c00}.delete{color:#c62828}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em}pre{background:#f5f7fa;
padding:.6em;overflow:auto;border-radius:4px}table{border-collapse:collapse}td,th{border:1px solid #dde;
padding:.2em .5em;text-align:left;vertical-align:top}details{margin:.3em 0}header a{color:#9cf}
"""
DOCS_CSP = ("default-src 'none'; style-src 'sha256-"
            + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
            + "'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method}{path}".lower()).strip("-")


def render_html(spec: dict[str, Any]) -> str:
    """A self-contained page: every operation, its parameters, bodies and schemas."""
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(spec['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(spec['info']['title'])} <small>{_e(spec['info']['version'])}</small></h1>",
        f"<p>{_e(spec['info']['description'])}</p><p>Machine-readable: <a "
        "href=/openapi.json>/openapi.json</a> (OpenAPI 3.1)</p></header><main><nav>",
    ]
    for tag in sorted(by_tag):
        out.append(f"<strong>{_e(tag)}</strong>")
        for path, method, _op in by_tag[tag]:
            out.append(f"<a href='#{_anchor(method, path)}'><span class='m {method}'>"
                       f"{method.upper()}</span> {_e(path)}</a>")
    out.append("</nav><section class=content>")
    for tag in sorted(by_tag):
        out.append(f"<h2>{_e(tag)}</h2>")
        for path, method, op in by_tag[tag]:
            out.append(f"<div class=op id='{_anchor(method, path)}'><h3><span class='m {method}'>"
                       f"{method.upper()}</span> <code>{_e(path)}</code></h3>")
            out.append(f"<p><strong>{_e(op.get('summary', ''))}</strong></p>")
            if op.get("description"):
                out.append(f"<p>{_e(op['description'])}</p>")
            out.append("<p>Auth: " + ("bearer API key" if op.get("security") else "none") + "</p>")
            if op.get("parameters"):
                out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>about</th></tr>")
                for p in op["parameters"]:
                    if "$ref" in p:
                        p = spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                    out.append(f"<tr><td><code>{_e(p['name'])}</code>{' *' if p.get('required') else ''}"
                               f"</td><td>{_e(p['in'])}</td><td><code>{_e(json.dumps(p['schema']))}"
                               f"</code></td><td>{_e(p.get('description', ''))}</td></tr>")
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                media = body["content"]["application/json"]
                out.append(f"<p>Request body: {_schema_link(media['schema'])}</p>")
                if "example" in media:
                    out.append("<pre>" + _e(json.dumps(media["example"], indent=2, ensure_ascii=False))
                               + "</pre>")
            out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
            for code, resp in op["responses"].items():
                schema = next(iter(resp.get("content", {}).values()), {}).get("schema")
                out.append(f"<tr><td>{_e(code)}</td><td>{_e(resp['description'])}</td>"
                           f"<td>{_schema_link(schema) if schema else ''}</td></tr>")
            out.append("</table></div>")
    out.append("<h2>Schemas</h2>")
    for name, schema in sorted(spec["components"]["schemas"].items()):
        out.append(f"<details id='schema-{_e(name)}'><summary><code>{_e(name)}</code></summary><pre>"
                   + _e(json.dumps(schema, indent=2, ensure_ascii=False)) + "</pre></details>")
    out.append("</section></main></body></html>")
    return "\n".join(out)


def _schema_link(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        return f"<a href='#schema-{_e(name)}'><code>{_e(name)}</code></a>"
    return f"<code>{_e(json.dumps(schema))}</code>"
