"""Pay-side client for a Stripe-compatible API (Stripe itself, or localstripe in tests).

The statements service depends on the small `Payments` port that billing owns
(`billing.settlement`), never on HTTP; `StripeClient` is the real implementation, and its
`StripeError` is a `billing.settlement.PaymentError`. What a caller must know:

- Amounts are `Fen` (int, the currency's smallest unit) and may be negative for credits;
  a float anywhere in a request raises `TypeError` before anything is sent.
- Every POST carries an `Idempotency-Key`: the caller's (deterministic, e.g.
  ``f"stmt:{period}:{uscc}:customer"``) or, by default, a hash of method, path and body, so
  the retries of one call share one key. Two deliberately identical creations therefore need
  distinct keys, or Stripe (24 h window) answers the second with the first's object.
- 429, 5xx and connection errors are retried with exponential back-off and jitter, bounded
  by `max_retries`, honouring `Retry-After` and Stripe's `Stripe-Should-Retry`. Anything else
  non-2xx raises `StripeError` carrying Stripe's own type, code, message and param.
- localstripe (the test server) ignores `Idempotency-Key`. The `ensure_*` methods therefore
  look objects up by metadata (`uscc`, `statement_key`) before creating, so a re-run creates
  nothing twice on either server; on real Stripe the key also covers a crash between the
  look-up and the create.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, urlencode

import requests

from billing.settlement import Fen, PaymentError
from config.settings import Settings

log = logging.getLogger(__name__)

StripeObject = dict[str, Any]

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
META_USCC = "uscc"
META_STATEMENT_KEY = "statement_key"


class StripeError(PaymentError):
    """A non-2xx answer (or no answer at all), with the fields of Stripe's error object.

    `status` is None when the server could not be reached (`type` "api_connection_error"):
    the port's `unreachable`.
    """

    def __init__(
        self,
        status: int | None,
        type: str,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, unreachable=status is None)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        code = f"/{self.code}" if self.code else ""
        return f"{self.status} {self.type}{code}: {self.message}{where}"


class IdempotencyConflict(StripeError):
    """An `ensure_*` look-up found an object under the key whose content differs."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(409, "idempotency_error", "statement_key_conflict", message, param)


def encode_form(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten params into Stripe's bracket form encoding.

    ``{"metadata": {"uscc": "X"}, "expand": ["lines"]}`` becomes
    ``[("metadata[uscc]", "X"), ("expand[]", "lines")]``; a list of mappings is indexed
    (``items[0][price]``). None is omitted, booleans are ``true``/``false``, floats are refused.
    """
    pairs: list[tuple[str, str]] = []

    def add(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for sub, v in value.items():
                add(f"{key}[{sub}]", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                add(f"{key}[{i}]" if isinstance(v, Mapping) else f"{key}[]", v)
        elif isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, float):
            raise TypeError(f"{key}: floats are not sent to the payment API (got {value!r})")
        elif isinstance(value, (int, str)):
            pairs.append((key, str(value)))
        else:
            raise TypeError(f"{key}: cannot form-encode {type(value).__name__}")

    for k, v in params.items():
        add(k, v)
    return pairs


def default_idempotency_key(method: str, path: str, form: list[tuple[str, str]]) -> str:
    """A key derived from the request itself: the same call always gets the same key."""
    digest = hashlib.sha256(f"{method} {path}\n{urlencode(form)}".encode()).hexdigest()
    return f"auto:{digest[:48]}"


def _require_fen(name: str, value: Any) -> Fen:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in fen, got {type(value).__name__} {value!r}")
    return value


def _retry_after_seconds(value: str | None) -> float | None:  # float ok: seconds, not money
    """`Retry-After` as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))  # float ok: seconds, not money
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_from_response(resp: requests.Response) -> StripeError:
    request_id = resp.headers.get("Request-Id")
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return StripeError(
            resp.status_code,
            err.get("type") or "api_error",
            err.get("code"),
            err.get("message") or resp.reason or "",
            err.get("param"),
            request_id=request_id,
        )
    # Not a Stripe error object (e.g. a proxy page, or a route the server does not have).
    text = (resp.text or resp.reason or "").strip()[:500]
    return StripeError(resp.status_code, "api_error", None, text, None, request_id=request_id)


@dataclass(frozen=True)
class Retrying:
    """How `StripeClient` retries a retryable failure (its arguments of the same names)."""

    max_retries: int  # attempts after the first
    backoff_base: float  # float ok: seconds, not money
    backoff_max: float  # float ok: seconds, not money
    retry_after_max: float  # float ok: seconds, not money; a longer Retry-After is not waited for

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:  # float ok: seconds
        """The wait after failed attempt `attempt`: exponential, capped, with jitter in [50%, 100%]
        so replicas do not retry in step; the server's `Retry-After` when it asks for longer."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = ceiling * (0.5 + 0.5 * rng.random())
        if retry_after is not None and retry_after <= self.retry_after_max:
            delay = max(delay, retry_after)
        return delay


class StripeClient:
    """`billing.settlement.Payments` over HTTP: one `requests.Session`, form bodies, retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,  # float ok: seconds, not money
        max_retries: int = 3,
        *,
        backoff_base: float = 0.5,  # float ok: seconds, not money
        backoff_max: float = 8.0,  # float ok: seconds, not money
        retry_after_max: float = 60.0,  # float ok: seconds, not money
        page_size: int = 100,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required (VOUCHER_STRIPE_API_KEY)")
        retrying = Retrying(max_retries, backoff_base, backoff_max, retry_after_max)  # checks them
        base = base_url.rstrip("/")
        # Accept both "https://api.stripe.com" and ".../v1": paths below carry /v1.
        self.base_url = base.removesuffix("/v1")
        self.timeout = timeout
        self.retrying = retrying
        self.page_size = page_size
        self._sleep = sleep
        self._random = random.Random()
        self.session = session or requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {api_key}", "User-Agent": "compute-voucher/0.1"}
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> StripeClient:
        return cls(settings.stripe_api_base, settings.stripe_api_key, **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """Send one API call (retrying as the module docstring says) and return its JSON."""
        method = method.upper()
        form = encode_form(params or {})
        url = self.base_url + path
        headers: dict[str, str] = {}
        kwargs: dict[str, Any] = {"timeout": self.timeout, "headers": headers}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or default_idempotency_key(
                method, path, form
            )
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            kwargs["data"] = urlencode(form)
        elif form:
            kwargs["params"] = form

        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None  # float ok: seconds, not money
            try:
                resp = self.session.request(method, url, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure: StripeError = StripeError(
                    None, "api_connection_error", None, f"{method} {url}: {exc}"
                )
                retryable = True
            else:
                if 200 <= resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise StripeError(
                            resp.status_code,
                            "api_error",
                            None,
                            f"{method} {path}: answer is not JSON: {resp.text[:200]!r}",
                        ) from None
                failure = _error_from_response(resp)
                should = resp.headers.get("Stripe-Should-Retry", "").lower()
                if should in ("true", "false"):
                    retryable = should == "true"
                else:
                    retryable = resp.status_code in RETRYABLE_STATUSES
                retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
            if not retryable or attempt > self.retrying.max_retries:
                raise failure
            delay = self.retrying.delay(attempt, retry_after, self._random)
            log.warning(
                "stripe %s %s failed (%s); retry %d/%d in %.2fs",
                method,
                path,
                failure,
                attempt,
                self.retrying.max_retries,
                delay,
            )
            self._sleep(delay)

    def _paginate(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict]:
        """Every object of a list endpoint, following `starting_after` while `has_more`."""
        query = dict(params or {})
        query["limit"] = self.page_size
        while True:
            page = self.request("GET", path, query)
            data = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            query["starting_after"] = data[-1]["id"]

    # -- customers -----------------------------------------------------------------------

    def create_customer(
        self,
        *,
        name: str,
        metadata: Mapping[str, str] | None = None,
        email: str | None = None,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        params = {"name": name, "email": email, "metadata": dict(metadata or {})}
        return self.request("POST", "/v1/customers", params, idempotency_key=idempotency_key)

    def retrieve_customer(self, customer_id: str) -> StripeObject:
        return self.request("GET", f"/v1/customers/{quote(customer_id, safe='')}")

    def find_customer_by_metadata(self, key: str, value: str) -> StripeObject | None:
        """The oldest customer whose `metadata[key] == value`, or None.

        Lists every customer and filters here: localstripe has no search, and Stripe's
        search is eventually consistent (a customer created seconds ago may be missing).
        """
        matches = [
            c
            for c in self._paginate("/v1/customers")
            if (c.get("metadata") or {}).get(key) == value
        ]
        if len(matches) > 1:
            log.warning("%d customers carry metadata %s=%s", len(matches), key, value)
        return min(matches, key=lambda c: (c.get("created", 0), c["id"])) if matches else None

    # -- invoice items -------------------------------------------------------------------

    def create_invoice_item(
        self,
        *,
        customer: str,
        amount: Fen,
        description: str,
        currency: str = "cny",
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """A pending item for the customer's next invoice; a negative amount is a credit."""
        params = {
            "customer": customer,
            "amount": _require_fen("amount", amount),
            "currency": currency.lower(),
            "description": description,
            "metadata": dict(metadata or {}),
        }
        return self.request("POST", "/v1/invoiceitems", params, idempotency_key=idempotency_key)

    def list_invoice_items(self, customer: str, pending: bool | None = None) -> list[StripeObject]:
        """The customer's invoice items; `pending` True/False keeps un-/invoiced ones only.

        The filter is applied here, not sent: localstripe fails on `pending=`, and it lists
        pending items only (Stripe lists all), so invoiced items may be missing on localstripe;
        `ensure_invoice_item` also looks at invoice lines for that reason.
        """
        items = list(self._paginate("/v1/invoiceitems", {"customer": customer}))
        if pending is None:
            return items
        return [i for i in items if (i.get("invoice") is None) == pending]

    # -- invoices ------------------------------------------------------------------------

    def create_invoice(
        self,
        *,
        customer: str,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        auto_advance: bool = False,
        pending_invoice_items_behavior: str | None = "include",
    ) -> StripeObject:
        """A draft invoice holding the customer's pending invoice items.

        `pending_invoice_items_behavior="include"` because Stripe's default since API version
        2022-08-01 is `exclude` (an empty invoice). `auto_advance` is sent only when True:
        false is Stripe's default and localstripe fails on the parameter.
        """
        params: dict[str, Any] = {
            "customer": customer,
            "metadata": dict(metadata or {}),
            "pending_invoice_items_behavior": pending_invoice_items_behavior,
        }
        if auto_advance:
            params["auto_advance"] = True
        return self.request("POST", "/v1/invoices", params, idempotency_key=idempotency_key)

    def finalize_invoice(
        self, invoice_id: str, *, idempotency_key: str | None = None
    ) -> StripeObject:
        """Draft → open (or paid when nothing is due). Finalizing twice is a StripeError."""
        path = f"/v1/invoices/{quote(invoice_id, safe='')}/finalize"
        return self.request("POST", path, {}, idempotency_key=idempotency_key)

    def retrieve_invoice(self, invoice_id: str) -> StripeObject:
        return self.request("GET", f"/v1/invoices/{quote(invoice_id, safe='')}")

    def list_invoices(self, customer: str) -> list[StripeObject]:
        return list(self._paginate("/v1/invoices", {"customer": customer}))

    def list_invoice_lines(self, invoice_id: str) -> list[StripeObject]:
        return list(self._paginate(f"/v1/invoices/{quote(invoice_id, safe='')}/lines"))

    # -- idempotent by metadata look-up ---------------------------------------------------

    def ensure_customer(
        self,
        uscc: str,
        name: str,
        *,
        email: str | None = None,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """The customer with metadata `uscc`, created if none exists."""
        found = self.find_customer_by_metadata(META_USCC, uscc)
        if found is not None:
            return found
        return self.create_customer(
            name=name,
            email=email,
            metadata={META_USCC: uscc},
            idempotency_key=idempotency_key or f"customer:{uscc}",
        )

    def find_invoice_item(self, customer: str, key: str) -> StripeObject | None:
        """The invoice item (pending, or a line of one of the customer's invoices) for `key`."""
        for item in self.list_invoice_items(customer):
            if (item.get("metadata") or {}).get(META_STATEMENT_KEY) == key:
                return item
        for invoice in self.list_invoices(customer):
            for line in self.list_invoice_lines(invoice["id"]):
                if (line.get("metadata") or {}).get(META_STATEMENT_KEY) == key:
                    return {
                        "object": "invoiceitem",
                        "id": line.get("invoice_item") or line["id"],
                        "invoice": invoice["id"],
                        "customer": customer,
                        "amount": line.get("amount"),
                        "currency": line.get("currency"),
                        "description": line.get("description"),
                        "metadata": line.get("metadata") or {},
                    }
        return None

    def ensure_invoice_item(
        self,
        customer: str,
        key: str,
        amount: Fen,
        description: str,
        currency: str = "cny",
        *,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """The item with metadata `statement_key == key`, created if missing.

        An existing item with another amount or currency raises `IdempotencyConflict`:
        posted items are corrected by a new item, never silently replaced.
        """
        _require_fen("amount", amount)
        found = self.find_invoice_item(customer, key)
        if found is None:
            return self.create_invoice_item(
                customer=customer,
                amount=amount,
                currency=currency,
                description=description,
                metadata={META_STATEMENT_KEY: key},
                idempotency_key=idempotency_key or f"invoiceitem:{key}",
            )
        if found.get("amount") != amount:
            raise IdempotencyConflict(
                f"invoice item {key!r} exists with amount {found.get('amount')}, not {amount}",
                "amount",
            )
        if (found.get("currency") or "").lower() != currency.lower():
            raise IdempotencyConflict(
                f"invoice item {key!r} exists in {found.get('currency')}, not {currency}",
                "currency",
            )
        return found

    def ensure_invoice(
        self,
        customer: str,
        statement_key: str,
        *,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """The invoice with metadata `statement_key` (any status), created as a draft if missing.

        A new invoice takes *every* pending item of the customer, so ensure this statement's
        items first and leave no other pending items on the customer.
        """
        for invoice in self.list_invoices(customer):
            if (invoice.get("metadata") or {}).get(META_STATEMENT_KEY) == statement_key:
                return invoice
        return self.create_invoice(
            customer=customer,
            metadata={META_STATEMENT_KEY: statement_key},
            idempotency_key=idempotency_key or f"invoice:{statement_key}",
        )
