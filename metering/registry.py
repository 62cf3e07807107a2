"""Providers, enterprises and model filings: the programme's registry (finance-maintained)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.models import ModelFiling, Provider


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
