"""`adapters.stripe.StripeClient` against real servers.

- `localstripe`: the stock `localstripe` console script of this venv, as a subprocess.
- `localstripe_invoicing`: the same localstripe package, plus the two invoice endpoints
  localstripe 1.15.10 lacks (standalone `POST /v1/invoices` from pending items, and
  `POST /v1/invoices/{id}/finalize`), filled in with localstripe's own Invoice model by
  `tests/integration/localstripe_compat.py` (shared with the statements tests, which say
  why). Stock behaviour is pinned by
  `test_stock_localstripe_cannot_create_or_finalize_standalone_invoices`.
- `scripted`: a tiny `http.server` in a thread answering scripted statuses, for retries and
  the exact wire format.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from adapters.stripe import (
    IdempotencyConflict,
    StripeClient,
    StripeError,
    default_idempotency_key,
    encode_form,
)
from billing.settlement import Payments
from config.settings import Settings
from tests.integration.localstripe_compat import (
    ServerDidNotStart,
    free_port,
    start_localstripe,
    start_server,
    stop_server,
)

API_KEY = "sk_test_voucher"


# -- servers -------------------------------------------------------------------------------


def _free_port() -> int:
    return free_port()


def _start(argv: list[str], port: int, log_path: Path, **popen) -> subprocess.Popen:
    try:
        return start_server(argv, port, log_path, **popen)
    except ServerDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory):
    """Base URL of a stock localstripe started from scratch on a free port."""
    binary = Path(sys.executable).with_name("localstripe")
    port = _free_port()
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    # --from-scratch: never load /tmp/localstripe.pickle, which every localstripe shares.
    proc = _start([str(binary), "--port", str(port), "--from-scratch"], port, log)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="session")
def localstripe_invoicing(tmp_path_factory):
    """Base URL of localstripe with standalone invoices and finalize (see module docstring)."""
    try:
        proc, url = start_localstripe(tmp_path_factory.mktemp("localstripe_invoicing"))
    except ServerDidNotStart as exc:
        pytest.fail(str(exc))
    yield url
    stop_server(proc)


def _client(base_url: str, **kwargs) -> StripeClient:
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("max_retries", 0)
    return StripeClient(base_url, API_KEY, **kwargs)


@pytest.fixture
def client(localstripe):
    with _client(localstripe) as c:
        yield c


@pytest.fixture
def invoicing_client(localstripe_invoicing):
    with _client(localstripe_invoicing) as c:
        yield c


def _uscc() -> str:
    """A distinct 18-character code per test: the session's servers are shared."""
    return ("91330402" + uuid.uuid4().hex[:10]).upper()


class Scripted:
    """A real HTTP server answering from a script of (status, headers, body) in order."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], dict]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status, headers, payload = (
                    outer.script.pop(0) if outer.script else (200, {}, {"object": "ok"})
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    s = Scripted()
    yield s
    s.close()


UNAVAILABLE = (503, {}, {"error": {"type": "api_error", "message": "try later"}})


# -- wire format ---------------------------------------------------------------------------


def test_form_encoding_uses_brackets_for_nested_params():
    form = encode_form(
        {
            "customer": "cus_1",
            "amount": -345,
            "metadata": {"uscc": "91330402MA2B7K3X1X", "statement_key": "stmt:2025-06:x"},
            "expand": ["lines", "customer"],
            "items": [{"price": "p1", "quantity": 2}],
            "auto_advance": False,
            "email": None,
        }
    )
    assert form == [
        ("customer", "cus_1"),
        ("amount", "-345"),
        ("metadata[uscc]", "91330402MA2B7K3X1X"),
        ("metadata[statement_key]", "stmt:2025-06:x"),
        ("expand[]", "lines"),
        ("expand[]", "customer"),
        ("items[0][price]", "p1"),
        ("items[0][quantity]", "2"),
        ("auto_advance", "false"),
    ]


def test_request_body_on_the_wire_is_bracket_form_encoded(scripted):
    with _client(scripted.url) as c:
        c.create_customer(name="嘉兴智算", metadata={"uscc": "91330402MA2B7K3X1X"})
    (req,) = scripted.requests
    assert req["path"] == "/v1/customers"
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert req["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert "metadata%5Buscc%5D=91330402MA2B7K3X1X" in req["body"]
    assert parse_qsl(req["body"]) == [
        ("name", "嘉兴智算"),
        ("metadata[uscc]", "91330402MA2B7K3X1X"),
    ]


def test_create_invoice_includes_pending_items_and_sends_auto_advance_only_when_true(scripted):
    # Stripe's default since 2022-08-01 is `exclude` (an empty invoice); localstripe always
    # includes and fails on `auto_advance`, so only the wire shows these.
    with _client(scripted.url) as c:
        c.create_invoice(customer="cus_1", metadata={"statement_key": "s"})
        c.create_invoice(customer="cus_1", auto_advance=True)
    first, second = (dict(parse_qsl(r["body"])) for r in scripted.requests)
    assert first == {
        "customer": "cus_1",
        "metadata[statement_key]": "s",
        "pending_invoice_items_behavior": "include",
    }
    assert second["auto_advance"] == "true"


def test_float_amount_is_refused_before_anything_is_sent(scripted):
    with _client(scripted.url) as c:
        with pytest.raises(TypeError, match="fen"):
            c.create_invoice_item(customer="cus_1", amount=12.5, description="x")
        with pytest.raises(TypeError, match="float"):
            c.request("POST", "/v1/invoiceitems", {"metadata": {"rate": 0.5}})
    assert scripted.requests == []


def test_idempotency_key_is_callers_or_derived_from_the_body(scripted):
    with _client(scripted.url) as c:
        c.create_customer(name="A", idempotency_key="stmt:2025-06:X:customer")
        c.create_customer(name="A")
        c.create_customer(name="A")
        c.create_customer(name="B")
        c.retrieve_invoice("in_1")
    keys = [r["headers"].get("Idempotency-Key") for r in scripted.requests]
    assert keys[0] == "stmt:2025-06:X:customer"
    assert keys[1] == keys[2] == default_idempotency_key("POST", "/v1/customers", [("name", "A")])
    assert keys[3] != keys[1]
    assert keys[4] is None  # GETs carry none


def test_from_settings_reads_voucher_stripe_settings():
    # The client takes the settings the composition root read (issue 13: one reader of the env).
    def from_env(env):
        return StripeClient.from_settings(Settings.from_env(env=env))

    c = from_env({"VOUCHER_STRIPE_API_BASE": "http://127.0.0.1:9/v1/", "VOUCHER_STRIPE_API_KEY": "sk_x"})
    assert c.base_url == "http://127.0.0.1:9"
    assert c.session.headers["Authorization"] == "Bearer sk_x"
    with pytest.raises(ValueError, match="VOUCHER_STRIPE_API_KEY"):
        from_env({"VOUCHER_STRIPE_API_BASE": "http://127.0.0.1:9"})


def test_stripe_client_satisfies_payments_protocol():
    members = [n for n, v in vars(Payments).items() if callable(v) and not n.startswith("_")]
    assert {"ensure_customer", "ensure_invoice_item", "ensure_invoice"} <= set(members)
    for name in members:
        wanted = inspect.signature(getattr(Payments, name)).parameters
        actual = inspect.signature(getattr(StripeClient, name)).parameters
        for param in wanted.values():
            assert param.name in actual, f"StripeClient.{name} lacks {param.name}"
            assert actual[param.name].kind == param.kind, f"{name}({param.name})"


# -- retries -------------------------------------------------------------------------------


def test_503_twice_then_200_is_retried_with_the_same_idempotency_key(scripted):
    scripted.script = [UNAVAILABLE, UNAVAILABLE, (200, {}, {"id": "cus_ok", "object": "customer"})]
    with _client(scripted.url, max_retries=3, backoff_base=0.01) as c:
        customer = c.create_customer(name="A", metadata={"uscc": "X"})
    assert customer["id"] == "cus_ok"
    assert len(scripted.requests) == 3
    keys = {r["headers"]["Idempotency-Key"] for r in scripted.requests}
    assert len(keys) == 1 and keys != {""}
    assert len({r["body"] for r in scripted.requests}) == 1


def test_backoff_grows_exponentially_with_jitter_and_is_bounded(scripted):
    scripted.script = [UNAVAILABLE] * 5
    slept: list[float] = []
    client = _client(scripted.url, max_retries=4, backoff_base=1, backoff_max=3, sleep=slept.append)
    with client as c, pytest.raises(StripeError) as info:
        c.create_invoice_item(customer="cus_1", amount=100, description="x")
    assert info.value.status == 503 and info.value.message == "try later"
    assert len(scripted.requests) == 5  # 1 + max_retries, then give up
    assert len(slept) == 4
    assert 0.5 <= slept[0] <= 1  # base 1 s, jitter keeps 50-100 %
    assert 1 <= slept[1] <= 2
    assert 1.5 <= slept[2] <= 3 and 1.5 <= slept[3] <= 3  # capped at backoff_max


def test_429_honours_retry_after(scripted):
    scripted.script = [
        (429, {"Retry-After": "7"}, {"error": {"type": "rate_limit_error", "message": "slow"}}),
        (200, {}, {"id": "ii_1", "object": "invoiceitem"}),
    ]
    slept: list[float] = []
    with _client(scripted.url, max_retries=2, backoff_base=0.01, sleep=slept.append) as c:
        assert c.create_invoice_item(customer="cus_1", amount=1, description="x")["id"] == "ii_1"
    assert slept == [7.0]
    assert len(scripted.requests) == 2


def test_4xx_is_not_retried_and_carries_stripes_error_fields(scripted):
    scripted.script = [
        (
            400,
            {"Request-Id": "req_1"},
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "parameter_invalid_integer",
                    "message": "Invalid integer: 12.5",
                    "param": "amount",
                }
            },
        )
    ]
    client = _client(scripted.url, max_retries=3, sleep=lambda s: None)
    with client as c, pytest.raises(StripeError) as info:
        c.request("POST", "/v1/invoiceitems", {"amount": "12.5"})
    e = info.value
    assert (e.status, e.type, e.code, e.param, e.request_id) == (
        400,
        "invalid_request_error",
        "parameter_invalid_integer",
        "amount",
        "req_1",
    )
    assert e.message == "Invalid integer: 12.5"
    assert len(scripted.requests) == 1


def test_stripe_should_retry_header_overrides_the_status(scripted):
    scripted.script = [
        (409, {"Stripe-Should-Retry": "true"}, {"error": {"type": "api_error", "message": "lock"}}),
        (500, {"Stripe-Should-Retry": "false"}, {"error": {"type": "api_error", "message": "no"}}),
    ]
    client = _client(scripted.url, max_retries=3, sleep=lambda s: None)
    with client as c, pytest.raises(StripeError) as info:
        c.create_customer(name="A")
    assert info.value.status == 500 and len(scripted.requests) == 2


def test_connection_errors_are_retried_then_surface_as_stripe_error():
    slept: list[float] = []
    nobody = f"http://127.0.0.1:{_free_port()}"
    client = _client(nobody, max_retries=2, backoff_base=0.01, sleep=slept.append)
    with client as c, pytest.raises(StripeError) as info:
        c.create_customer(name="A")
    assert info.value.status is None and info.value.type == "api_connection_error"
    assert len(slept) == 2


# -- stock localstripe ---------------------------------------------------------------------


def test_create_customer_with_metadata(client):
    uscc = _uscc()
    created = client.create_customer(
        name="嘉兴某智能科技有限公司",
        email="finance@example.cn",
        metadata={"uscc": uscc, "county": "南湖区"},
    )
    assert created["id"].startswith("cus_")
    assert created["metadata"] == {"uscc": uscc, "county": "南湖区"}
    assert client.retrieve_customer(created["id"])["name"] == "嘉兴某智能科技有限公司"
    assert client.find_customer_by_metadata("uscc", uscc)["id"] == created["id"]
    assert client.find_customer_by_metadata("uscc", _uscc()) is None


def test_find_customer_by_metadata_follows_pagination(localstripe):
    with _client(localstripe, page_size=2) as c:
        wanted = [_uscc() for _ in range(5)]
        ids = [
            c.create_customer(name=f"E{i}", metadata={"uscc": u})["id"]
            for i, u in enumerate(wanted)
        ]
        # Five customers of this test plus any earlier ones: several pages of two.
        assert [c.find_customer_by_metadata("uscc", u)["id"] for u in wanted] == ids


def test_invoice_items_positive_and_negative_in_cny_sum_up(client):
    customer = client.create_customer(name="E", metadata={"uscc": _uscc()})["id"]
    amounts = [1_234_500, -34_500, 1]
    for i, amount in enumerate(amounts):
        item = client.create_invoice_item(
            customer=customer,
            amount=amount,
            currency="CNY",
            description=f"line {i}",
            metadata={"statement_key": f"k{i}"},
        )
        assert (item["amount"], item["currency"], item["invoice"]) == (amount, "cny", None)
    pending = client.list_invoice_items(customer, pending=True)
    assert sorted(i["amount"] for i in pending) == sorted(amounts)
    assert sum(i["amount"] for i in pending) == 1_200_001
    assert client.list_invoice_items(customer, pending=False) == []


def test_stock_localstripe_cannot_create_or_finalize_standalone_invoices(client):
    """Pins localstripe 1.15.10's gap; when this fails, drop the invoicing launcher."""
    customer = client.create_customer(name="E", metadata={"uscc": _uscc()})["id"]
    client.create_invoice_item(customer=customer, amount=100, description="x")
    with pytest.raises(StripeError) as info:
        client.create_invoice(customer=customer, metadata={"statement_key": "s"})
    assert (info.value.status, info.value.message) == (404, "No upcoming invoices for customer")
    with pytest.raises(StripeError) as info:
        client.finalize_invoice("in_doesnotexist")
    assert info.value.status == 404  # no such route: aiohttp's plain "404: Not Found"
    assert "Not Found" in info.value.message


def test_client_error_surfaces_localstripes_message(client):
    with pytest.raises(StripeError) as info:
        client.create_invoice_item(customer="cus_missing", amount=100, description="x")
    e = info.value
    assert (e.status, e.type, e.message) == (404, "invalid_request_error", "Not Found")
    assert e.param is None  # localstripe never names the param; Stripe does (see above)
    with pytest.raises(StripeError) as info:
        client.request(
            "POST", "/v1/invoiceitems", {"customer": "cus_x", "amount": "abc", "currency": "cny"}
        )
    assert (info.value.status, info.value.message) == (400, "Bad request")


def test_ensure_customer_and_items_twice_create_nothing_twice(client):
    uscc = _uscc()
    first = client.ensure_customer(uscc, "E")
    assert client.ensure_customer(uscc, "E renamed")["id"] == first["id"]
    a = client.ensure_invoice_item(first["id"], f"stmt:2025-06:{uscc}:p1", 500_000, "gpu")
    b = client.ensure_invoice_item(first["id"], f"stmt:2025-06:{uscc}:adj", -20_000, "credit")
    assert (
        client.ensure_invoice_item(first["id"], f"stmt:2025-06:{uscc}:p1", 500_000, "gpu")["id"]
        == a["id"]
    )
    assert (
        client.ensure_invoice_item(first["id"], f"stmt:2025-06:{uscc}:adj", -20_000, "credit")["id"]
        == b["id"]
    )
    matches = [c for c in client._paginate("/v1/customers") if c["metadata"].get("uscc") == uscc]
    assert len(matches) == 1
    assert len(client.list_invoice_items(first["id"])) == 2


def test_ensure_invoice_item_with_other_amount_is_a_conflict(client):
    customer = client.ensure_customer(_uscc(), "E")["id"]
    client.ensure_invoice_item(customer, "stmt:k", 100, "gpu")
    with pytest.raises(IdempotencyConflict) as info:
        client.ensure_invoice_item(customer, "stmt:k", 101, "gpu")
    assert info.value.param == "amount"
    assert len(client.list_invoice_items(customer)) == 1


# -- localstripe with standalone invoices ---------------------------------------------------


def test_items_then_invoice_then_finalize_total_equals_the_sum(invoicing_client):
    c = invoicing_client
    customer = c.create_customer(name="E", metadata={"uscc": _uscc()})["id"]
    amounts = [1_234_500, -34_500, 7]
    for i, amount in enumerate(amounts):
        c.create_invoice_item(
            customer=customer,
            amount=amount,
            description=f"line {i}",
            metadata={"statement_key": f"k{i}"},
        )
    draft = c.create_invoice(
        customer=customer,
        metadata={"statement_key": "stmt:2025-06:x"},
        idempotency_key="stmt:2025-06:x:invoice",
    )
    assert draft["status"] == "draft" and draft["metadata"] == {"statement_key": "stmt:2025-06:x"}
    assert c.list_invoice_items(customer, pending=True) == []
    final = c.finalize_invoice(draft["id"])
    assert final["status"] == "open"
    assert final["status_transitions"]["finalized_at"] is not None
    invoice = c.retrieve_invoice(draft["id"])
    assert invoice["currency"] == "cny"
    assert invoice["subtotal"] == invoice["total"] == invoice["amount_due"] == sum(amounts)
    assert sorted(line["amount"] for line in c.list_invoice_lines(draft["id"])) == sorted(amounts)
    with pytest.raises(StripeError) as info:
        c.finalize_invoice(draft["id"])
    assert info.value.status == 400


def test_statement_cycle_run_twice_creates_nothing_twice(invoicing_client):
    c = invoicing_client
    uscc = _uscc()
    key = f"stmt:2025-06:{uscc}"
    lines = [(f"{key}:jx-aicc", 800_000, "智算 GPU"), (f"{key}:other-subsidy", -50_000, "抵扣")]

    def run() -> dict:
        customer = c.ensure_customer(uscc, "E")["id"]
        for line_key, amount, description in lines:
            c.ensure_invoice_item(customer, line_key, amount, description)
        return c.ensure_invoice(customer, key)

    first = run()
    c.finalize_invoice(first["id"])
    second = run()  # a re-run after the invoice took the items: they are found in its lines
    assert second["id"] == first["id"]
    customer = c.find_customer_by_metadata("uscc", uscc)["id"]
    assert [i["id"] for i in c.list_invoices(customer)] == [first["id"]]
    assert c.list_invoice_items(customer, pending=True) == []
    assert c.retrieve_invoice(first["id"])["total"] == 750_000
    assert c.find_invoice_item(customer, f"{key}:jx-aicc")["invoice"] == first["id"]
