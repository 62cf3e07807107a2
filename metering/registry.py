"""Providers, enterprises and model filings: the programme's registry (finance-maintained)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kernel import audit
from kernel.errors import Conflict, Invalid
from kernel.uscc import canonical_uscc
from metering.models import Enterprise, ModelFiling, Provider


def provider_listed(p: Provider, start: date, end: date) -> bool:
    """Listed at any time in [start, end] (the provider catalogue may change mid-year)."""
    return (p.listed_from is None or p.listed_from <= end) and (
        p.listed_until is None or p.listed_until >= start
    )


def filings_of(session: Session, uscc: str) -> list[ModelFiling]:
    return list(
        session.scalars(
            select(ModelFiling).where(ModelFiling.enterprise_uscc == uscc).order_by(ModelFiling.obtained_on)
        )
    )


def apply_changes(obj: Any, changes: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Set fields and return {field: (before, after)} for what really changed."""
    diff = {}
    for key, value in changes.items():
        before = getattr(obj, key)
        if before != value:
            setattr(obj, key, value)
            diff[key] = (before, value)
    return diff


def _register(session: Session, model: type, key: str, values: dict[str, Any], *, kind: str,
              exists: Conflict) -> Any:
    """Insert one registry row under its natural key, audited; `exists` if the key is taken,
    also when a concurrent registration of the same key wins the race (the insert's flush
    fails on the primary key). Runs inside the caller's transaction."""
    if session.get(model, key) is not None:
        raise exists
    obj = model(**values)
    session.add(obj)
    try:
        session.flush()
    except IntegrityError:
        raise exists from None
    audit.append(session, f"{kind}.created", kind, key, after=values)
    return obj


def create_provider(session: Session, values: dict[str, Any]) -> Provider:
    """Register a compute provider (docs/API.md#registry); Conflict `resource_exists` on its id."""
    pid = values["id"]
    return _register(session, Provider, pid, values, kind="provider",
                     exists=Conflict("resource_exists", f"Provider {pid!r} already exists", "id"))


def create_enterprise(session: Session, values: dict[str, Any]) -> Enterprise:
    """Register an enterprise (docs/API.md#registry); Conflict `resource_exists` on its USCC."""
    uscc = canonical_uscc(values["uscc"])
    values = {**values, "uscc": uscc}
    return _register(session, Enterprise, uscc, values, kind="enterprise",
                     exists=Conflict("resource_exists", f"Enterprise {uscc} already exists", "uscc"))


def check_key_subject(session: Session, role: str, subject: str | None) -> str | None:
    """A provider key names a registered provider, an enterprise key a registered USCC
    (in its canonical form, kernel.uscc), a finance key nothing; Invalid otherwise (param `subject`)."""
    if role == "finance":
        if subject:
            raise Invalid("invalid_field", "a finance key has no subject", "subject")
        return None
    if not subject:
        raise Invalid("missing_field", f"a {role} key needs a subject", "subject")
    if role == "provider":
        if session.get(Provider, subject) is None:
            raise Invalid("unknown_provider", f"No such provider: {subject!r}", "subject")
        return subject
    subject = canonical_uscc(subject)
    if session.get(Enterprise, subject) is None:
        raise Invalid("unknown_enterprise", f"No such enterprise: {subject!r}", "subject")
    return subject
