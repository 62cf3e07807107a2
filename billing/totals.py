"""A month's claim totals, added up claim by claim: the one definition behind the
reconciliation's summary (billing/reconciliation.py) and the report's (billing/reports.py),
so the two cannot drift apart (docs/API.md#reports)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kernel.vocabulary import CLAIM_STATUSES, RECONCILED, ClaimStatus

Fen = int

TOTAL_KEYS = ("amount_paid", "invoiced", "metered", "base", "computed", "payable", "reserved",
              "granted", "clawed_back")


@dataclass(kw_only=True)
class ClaimTotals:
    """Counts by status and discrepancy code, and the money totals (fen) of the claims added."""

    claims: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLAIM_STATUSES, 0))
    discrepancies: Counter = field(default_factory=Counter)
    cap_reached: int = 0
    totals: dict[str, Fen] = field(default_factory=lambda: dict.fromkeys(TOTAL_KEYS, 0))

    def add_claim(self, status: str, codes: Iterable[str], computed: Fen, payable: Fen,
                  clawed_back: Fen, cap_reached: bool, base: Fen | None = None) -> None:
        """One claim's own figures (count each claim once); `base` when the items' are not added."""
        self.claims += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.discrepancies.update(codes)
        t = self.totals
        t["computed"] += computed
        t["payable"] += payable
        t["clawed_back"] += clawed_back
        t["base"] += base or 0
        if status in RECONCILED:
            t["reserved"] += payable
        elif status == ClaimStatus.APPROVED:
            t["granted"] += payable
        if cap_reached:
            self.cap_reached += 1

    def add_item(self, codes: Iterable[str], amount_paid: Fen | None, invoiced: Fen | None,
                 metered: Fen | None, base: Fen | None) -> None:
        """One claim item's figures."""
        self.discrepancies.update(codes)
        t = self.totals
        t["amount_paid"] += amount_paid or 0
        t["invoiced"] += invoiced or 0
        t["metered"] += metered or 0
        t["base"] += base or 0

    def summary(self) -> dict[str, Any]:
        """Shaped as a reconciliation run's `summary` (docs/API.md#reconciliations)."""
        return {
            "claims": self.claims,
            "by_status": {s.value: self.by_status.get(s, 0) for s in CLAIM_STATUSES},
            "discrepancies": {str(k): n for k, n in sorted(self.discrepancies.items())},
            "cap_reached": self.cap_reached,
            "totals": {k: self.totals[k] for k in TOTAL_KEYS},
            "currency": "CNY",
        }


def codes_of(discrepancies: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(d["code"] for d in discrepancies or [])
