"""Test data builders (valid USCCs, records, registry rows through the API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from voucher.cli_demo import make_uscc

__all__ = ["make_uscc", "record", "setup_programme"]


def record(i: int, uscc: str, **overrides: Any) -> dict[str, Any]:
    ended = datetime(2026, 10, 15, 12, tzinfo=UTC) + timedelta(minutes=i)
    body = {
        "record_id": f"rec-{i}",
        "enterprise_uscc": uscc,
        "resource": "gpu.h800",
        "unit": "gpu_hour",
        "quantity": "2.5",
        "started_at": (ended - timedelta(hours=1)).isoformat(),
        "ended_at": ended.isoformat(),
        "amount": 3750,
        "currency": "CNY",
    }
    body.update(overrides)
    return body


def setup_programme(finance, providers=("prov-a",), enterprises=2, county="南湖区"):
    """Register providers and enterprises through the finance API; returns their ids."""
    for pid in providers:
        r = finance.post("/v1/providers", json={"id": pid, "name": pid.upper(),
                                                  "kind": "intelligent_computing",
                                                  "listed_from": "2025-05-13"})
        assert r.status_code == 201, r.json
    usccs = [make_uscc(100 + i) for i in range(enterprises)]
    for i, code in enumerate(usccs):
        r = finance.post("/v1/enterprises", json={"uscc": code, "name": f"企业{i}", "county": county,
                                                    "eligible": True})
        assert r.status_code == 201, r.json
    return list(providers), usccs


def usage(api, uscc: str, amount: int, period: str = "2026-10", rid: str | None = None, day: int = 15):
    """Push one usage record of `amount` fen ending mid-`period`; returns the record id."""
    year, month = map(int, period.split("-"))
    ended = datetime(year, month, day, 4, tzinfo=UTC)
    rid = rid or f"u-{uscc[-6:]}-{period}-{amount}-{day}"
    body = record(0, uscc, record_id=rid, amount=amount, quantity="1",
                  started_at=(ended - timedelta(hours=1)).isoformat(), ended_at=ended.isoformat())
    r = api.post("/v1/usage-records", json={"records": [body]})
    assert r.status_code == 200 and r.json["rejected"] == 0, r.json
    return rid


def invoice(api, no: str, uscc: str, amount: int, period: str = "2026-10", **extra):
    r = api.post("/v1/provider-invoices", json={"invoice_no": no, "enterprise_uscc": uscc,
                                                 "period": period, "amount": amount,
                                                 "issued_on": f"{period}-28", **extra})
    assert r.status_code in (200, 201), r.json
    return r.json


def claim(api, items, period: str = "2026-10", others=(), **extra):
    """items: [(provider_id, invoice_no, amount_paid)]"""
    r = api.post("/v1/claims", json={
        "period": period,
        "items": [{"provider_id": p, "invoice_no": n, "amount_paid": a} for p, n, a in items],
        "other_subsidies": [{"program": f"p{i}", "amount": a} for i, a in enumerate(others)],
        **extra})
    assert r.status_code == 201, r.json
    return r.json["id"]
