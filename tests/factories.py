"""Test data builders (valid USCCs, records, registry rows through the API)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from voucher.cli_demo import make_uscc

__all__ = ["make_uscc", "record", "setup_programme"]


def record(i: int, uscc: str, **overrides: Any) -> dict[str, Any]:
    ended = datetime(2026, 10, 15, 12, tzinfo=timezone.utc) + timedelta(minutes=i)
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
