"""What the risk signals need from the database, read with a few grouped queries per run
(docs/API.md#risk; docs/ARCHITECTURE.md#rule-homes): no query per claim.

`load` runs four statements for a period — usage priced above the catalogue per (provider,
enterprise, resource, unit, price), usage outside confirmed contracts and ineligible usage per
(provider, enterprise), metered spend per enterprise for the month and the three before it,
and the related-party links — and `RiskFacts.assess` turns one claim's share of them into
`{score, signals}` with the pure functions of billing/risk.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import BigInteger, and_, case, func, literal, not_, or_, select, type_coerce
from sqlalchemy.orm import Session

from billing import risk
from billing.policy import Policy
from kernel.db import MicroDecimal
from kernel.periods import shift_period
from kernel.vocabulary import UsageStatus
from metering.contracts import PriceEntry, RelatedParty, covered_clause, price_in_force_clause
from metering.models import Provider, UsageRecord

Fen = int


def eligible_clause(patterns: Iterable[str]):
    """SQL: the usage's resource matches one of the policy's patterns (True without patterns)."""
    patterns = list(patterns)
    if not patterns:
        return literal(True)
    return or_(*[UsageRecord.resource.like(risk.like_pattern(p), escape="\\") for p in patterns])


@dataclass
class RiskFacts:
    """One period's risk figures, keyed as the claims need them."""

    policy: Policy
    price_lines: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (provider, uscc)
    uncovered: dict[tuple[str, str], Fen] = field(default_factory=dict)
    ineligible: dict[tuple[str, str], tuple[Fen, Fen]] = field(default_factory=dict)  # (ineligible, metered)
    spend: dict[str, list[Fen]] = field(default_factory=dict)  # uscc -> [p-3, p-2, p-1, p]
    links: set[tuple[str, str]] = field(default_factory=set)
    providers: dict[str, Provider] = field(default_factory=dict)

    def assess(self, uscc: str, provider_ids: Iterable[str], legal_representative: str | None) -> dict[str, Any]:
        """`{score, signals}` of a claim of enterprise `uscc` on the providers of its items."""
        rp = self.policy.risk
        pids = sorted(set(provider_ids))
        lines = [line for p in pids for line in self.price_lines.get((p, uscc), [])]
        relations: dict[str, list[str]] = {}
        for p in pids:
            prov, why = self.providers.get(p), []
            if prov is not None and prov.uscc and prov.uscc == uscc:
                why.append("same_uscc")
            if (prov is not None and prov.legal_representative and legal_representative
                    and _name(prov.legal_representative) == _name(legal_representative)):
                why.append("same_legal_representative")
            if (p, uscc) in self.links:
                why.append("link")
            relations[p] = why
        inel = sum(self.ineligible.get((p, uscc), (0, 0))[0] for p in pids)
        metered = sum(self.ineligible.get((p, uscc), (0, 0))[1] for p in pids)
        months = self.spend.get(uscc, [0, 0, 0, 0])
        return risk.assess(rp, [
            risk.price_signal(rp, lines),
            risk.contract_signal(rp, {p: self.uncovered.get((p, uscc), 0) for p in pids}),
            risk.related_signal(rp, relations),
            risk.ineligible_signal(rp, inel, metered, self.policy.eligible_resources),
            risk.spike_signal(rp, months[3], months[:3]),
        ])


def _name(text: str) -> str:
    return "".join(text.split()).casefold()


def load(session: Session, policy: Policy, period: str, providers: dict[str, Provider]) -> RiskFacts:
    """The period's risk figures: four grouped queries, whatever the number of claims."""
    facts = RiskFacts(policy, providers=providers)
    active = and_(UsageRecord.period == period, UsageRecord.status == UsageStatus.ACTIVE)

    # price_above_catalogue: amount × den × 10⁶ > quantity_µ × unit_price × (den + num), exact in integers.
    tol = Fraction(policy.risk.price_tolerance)
    micro = type_coerce(UsageRecord.quantity, BigInteger)
    above = (UsageRecord.amount * (tol.denominator * MicroDecimal.SCALE)
             > micro * PriceEntry.unit_price * (tol.denominator + tol.numerator))
    for pid, uscc, resource, unit, price, n, amount, qty in session.execute(
        select(UsageRecord.provider_id, UsageRecord.enterprise_uscc, UsageRecord.resource, UsageRecord.unit,
               PriceEntry.unit_price, func.count(), func.sum(UsageRecord.amount), func.sum(micro))
        .join(PriceEntry, price_in_force_clause(UsageRecord))
        .where(active, above)
        .group_by(UsageRecord.provider_id, UsageRecord.enterprise_uscc, UsageRecord.resource, UsageRecord.unit,
                  PriceEntry.unit_price)
    ):
        paid = Fraction(int(amount) * MicroDecimal.SCALE, max(int(qty), 1))
        facts.price_lines.setdefault((pid, uscc), []).append({
            "provider_id": pid, "resource": resource, "unit": unit, "unit_price": int(price),
            "records": int(n), "amount": int(amount),
            "paid_unit_price": _decimal(paid)})

    # no_contract and ineligible_resource, per (provider, enterprise), in one pass.
    eligible = eligible_clause(policy.eligible_resources)
    for pid, uscc, uncovered, inel, total in session.execute(
        select(UsageRecord.provider_id, UsageRecord.enterprise_uscc,
               func.sum(case((not_(covered_clause(UsageRecord)), UsageRecord.amount), else_=0)),
               func.sum(case((not_(eligible), UsageRecord.amount), else_=0)),
               func.sum(UsageRecord.amount))
        .where(active).group_by(UsageRecord.provider_id, UsageRecord.enterprise_uscc)
    ):
        facts.uncovered[(pid, uscc)] = int(uncovered)
        facts.ineligible[(pid, uscc)] = (int(inel), int(total))

    # usage_spike: the enterprise's metered spend in the month and the three before it.
    months = [shift_period(period, k) for k in (-3, -2, -1, 0)]
    for uscc, p, amount in session.execute(
        select(UsageRecord.enterprise_uscc, UsageRecord.period, func.sum(UsageRecord.amount))
        .where(UsageRecord.period.in_(months), UsageRecord.status == UsageStatus.ACTIVE)
        .group_by(UsageRecord.enterprise_uscc, UsageRecord.period)
    ):
        facts.spend.setdefault(uscc, [0, 0, 0, 0])[months.index(p)] = int(amount)

    facts.links = {(p, u) for p, u in session.execute(select(RelatedParty.provider_id, RelatedParty.enterprise_uscc))}
    return facts


def _decimal(x: Fraction) -> str:
    """A unit price in fen to two decimals, half up, for the signal's figures."""
    return str((Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
