"""Provider invoices: idempotent by (provider, invoice_no); changed content is a conflict."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import ProviderInvoice
from kernel import audit
from kernel.billing_periods import refuse_if_closed
from kernel.errors import Conflict, Invalid
from metering.models import Enterprise, Provider


def _hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def submit_invoice(session: Session, provider_id: str, *, invoice_no: str, enterprise_uscc: str,
                   period: str, amount: int, tax_amount: int | None, issued_on: date) -> tuple[ProviderInvoice, bool]:
    """Store an invoice; the same content again returns the stored one (created=False)."""
    fields = {"enterprise_uscc": enterprise_uscc, "period": period, "amount": amount,
              "tax_amount": tax_amount, "issued_on": issued_on.isoformat()}
    digest = _hash(fields)
    existing = session.scalars(select(ProviderInvoice).where(
        ProviderInvoice.provider_id == provider_id, ProviderInvoice.invoice_no == invoice_no)).first()
    if existing is not None:
        if existing.content_hash == digest:
            return existing, False
        raise Conflict("conflict", f"Invoice {invoice_no!r} was already submitted with different "
                       "content; invoices are never overwritten", "invoice_no")
    if session.get(Provider, provider_id) is None:  # finance names it; a foreign key would 500
        raise Invalid("unknown_provider", f"Provider {provider_id!r} is not registered",
                      "provider_id")
    refuse_if_closed(session, period)  # a replay above still answers; a new invoice of a closed period is refused
    if session.get(Enterprise, enterprise_uscc) is None:
        raise Invalid("unknown_enterprise", f"Enterprise {enterprise_uscc} is not registered",
                      "enterprise_uscc")
    invoice = ProviderInvoice(provider_id=provider_id, invoice_no=invoice_no, content_hash=digest,
                              enterprise_uscc=enterprise_uscc, period=period, amount=amount,
                              tax_amount=tax_amount, issued_on=issued_on)
    session.add(invoice)
    session.flush()
    audit.append(session, "provider_invoice.submitted", "provider_invoice", f"inv_{invoice.id}",
                 after={"provider_id": provider_id, "invoice_no": invoice_no, **fields})
    return invoice, True
