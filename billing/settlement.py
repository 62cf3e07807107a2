"""The payments port: what billing needs from a payment system to issue monthly statements.

Billing owns this contract; back-ends implement it in `adapters/` (`adapters.stripe.StripeClient`
is the Stripe-compatible one) and the composition root (`voucher.scheduler`,
`voucher.cli_reports`) builds one from the settings and hands it to
`billing.statements.issue_statements` / `billing.jobs.statements_job`. Billing never imports
a back-end.

Every call is idempotent by metadata: the `ensure_*` methods find the object created for a
key before creating it, so a re-run creates nothing twice. Amounts are `Fen` (int, the
currency's smallest unit; negative for a credit).
"""

from __future__ import annotations

from typing import Any, Protocol

Fen = int
PaymentObject = dict[str, Any]  # the back-end's object as JSON: id, status, total, metadata, …


class PaymentError(Exception):
    """A payment back-end refused a call, or could not be reached at all (`unreachable`).

    Back-ends raise their own subclasses (`adapters.stripe.StripeError`) carrying more detail;
    `str(exc)` is what a statement records as its error.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Payments(Protocol):
    """What the statements service needs from the payment system (metadata-idempotent)."""

    def ensure_customer(self, uscc: str, name: str, *, email: str | None = None) -> PaymentObject:
        """The customer whose metadata `uscc` matches, created if missing."""
        ...

    def ensure_invoice_item(
        self, customer: str, key: str, amount: Fen, description: str, currency: str = "cny"
    ) -> PaymentObject:
        """The invoice item whose metadata `statement_key` is `key`, created if missing."""
        ...

    def ensure_invoice(self, customer: str, statement_key: str) -> PaymentObject:
        """The invoice with metadata `statement_key`, created (draft, pending items) if missing."""
        ...

    def finalize_invoice(self, invoice_id: str) -> PaymentObject: ...

    def retrieve_invoice(self, invoice_id: str) -> PaymentObject: ...

    def list_invoices(self, customer: str) -> list[PaymentObject]: ...
