"""Providers, enterprises and model filings: the programme's registry (finance-maintained)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.models import Enterprise, ModelFiling, Provider


def _d(value: date | None) -> str | None:
    return value.isoformat() if value else None


def provider_json(p: Provider) -> dict[str, Any]:
    return {
        "object": "provider",
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "county": p.county,
        "listed_from": _d(p.listed_from),
        "listed_until": _d(p.listed_until),
        "created_at": p.created_at.isoformat(),
    }


def filing_json(f: ModelFiling) -> dict[str, Any]:
    return {
        "object": "model_filing",
        "id": f"mf_{f.id}",
        "enterprise_uscc": f.enterprise_uscc,
        "filing_no": f.filing_no,
        "model_name": f.model_name,
        "obtained_on": f.obtained_on.isoformat(),
    }


def enterprise_json(e: Enterprise, filings: list[ModelFiling] | None = None) -> dict[str, Any]:
    body = {
        "object": "enterprise",
        "uscc": e.uscc,
        "id": e.uscc,
        "name": e.name,
        "county": e.county,
        "eligible": e.eligible,
        "created_at": e.created_at.isoformat(),
    }
    if filings is not None:
        body["model_filings"] = [filing_json(f) for f in filings]
    return body


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
