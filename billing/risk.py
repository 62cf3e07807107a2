"""Risk signals as pure functions (docs/API.md#risk).

A signal never changes an amount: it ranks and flags a claim for a person. Each function takes
the figures the reconciliation read (billing/risk_data.py, a few grouped queries per run) and
returns a signal — `{code, weight, message, message_zh, …figures}` — or None. `assess` adds the
weights into a score 0–100. The same functions serve redemptions later: a caller passes the
facts of what it assesses (`assess(policy_risk, signals)` knows nothing of claims).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any

from kernel.vocabulary import Discrepancy

Fen = int

# The signal codes, in the order they are reported (kernel/vocabulary.py RiskSignal holds the labels).
SIGNALS = ("price_above_catalogue", "no_contract", "related_party", "ineligible_resource", "usage_spike")


@dataclass(frozen=True)
class RiskPolicy:
    """The policy's `[risk]` table (docs/POLICY.md#risk). Money in fen, fractions exact."""

    price_tolerance: Fraction = Fraction(1, 5)
    spike_factor: Fraction = Fraction(3)
    spike_floor: Fen = 1_000_000
    review_threshold: int = 50
    weights: dict[str, int] = field(default_factory=lambda: {
        "price_above_catalogue": 40, "no_contract": 30, "related_party": 60,
        "ineligible_resource": 20, "usage_spike": 20})

    def __post_init__(self) -> None:
        if not isinstance(self.price_tolerance, Fraction) or self.price_tolerance < 0:
            raise ValueError("price_tolerance must be a non-negative Fraction")
        if not isinstance(self.spike_factor, Fraction) or self.spike_factor < 1:
            raise ValueError("spike_factor must be a Fraction >= 1")
        if not _is_int(self.spike_floor) or self.spike_floor < 0:
            raise ValueError("spike_floor must be a non-negative integer (fen)")
        if not _is_int(self.review_threshold) or not 0 <= self.review_threshold <= 100:
            raise ValueError("review_threshold must be an integer 0–100")
        if set(self.weights) != set(SIGNALS):
            raise ValueError(f"weights must name exactly {list(SIGNALS)}")
        for code, w in self.weights.items():
            if not _is_int(w) or not 0 <= w <= 100:
                raise ValueError(f"weights.{code} must be an integer 0–100")

    def __hash__(self) -> int:  # frozen dataclass with a dict field: hash by value
        return hash((self.price_tolerance, self.spike_factor, self.spike_floor, self.review_threshold,
                     tuple(sorted(self.weights.items()))))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- eligible resources ----------------------------------------------------------------------

def resource_eligible(patterns: Sequence[str], resource: str) -> bool:
    """Whether `resource` matches one of the policy's `eligible_resources` (shell patterns:
    `gpu.*` matches `gpu.h800`, `cpu` only `cpu`; case-sensitive). No patterns: every resource."""
    return not patterns or any(fnmatchcase(resource, p) for p in patterns)


def like_pattern(pattern: str) -> str:
    """A shell pattern (`*`, `?`) as an SQL LIKE pattern with `\\` as the escape character, so the
    database selects exactly what `resource_eligible` accepts (`[` classes are not supported)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


# --- the signals -------------------------------------------------------------------------------

def _fen_text(value) -> str:
    """A median of fen (possibly a half) as text, exactly: 1234 or 1234.5."""
    return f"{Decimal(value.numerator) / value.denominator if isinstance(value, Fraction) else Decimal(value):f}"


def _signal(policy: RiskPolicy, code: str, message: str, message_zh: str, **figures: Any) -> dict[str, Any]:
    return {"code": code, "weight": policy.weights[code], "message": message, "message_zh": message_zh,
            **figures}


def price_limit(policy: RiskPolicy, unit_price: Fen) -> Fraction:
    """The highest unit price (fen) within the tolerance: unit_price × (1 + price_tolerance)."""
    return unit_price * (1 + policy.price_tolerance)


def price_above(policy: RiskPolicy, amount: Fen, quantity: Any, unit_price: Fen) -> bool:
    """One usage's unit price (amount ÷ quantity) above the catalogue price by more than the
    tolerance; exactly at the limit is within it."""
    return Fraction(amount) > Fraction(quantity) * price_limit(policy, unit_price)


def price_signal(policy: RiskPolicy, lines: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """`price_above_catalogue`: `lines` are the (provider, resource, unit, catalogue price) groups
    with usage priced above the limit: {provider_id, resource, unit, unit_price, records, amount,
    paid_unit_price} (the offending records' amount ÷ quantity, as a decimal string)."""
    if not lines:
        return None
    worst = max(lines, key=lambda x: Fraction(x["paid_unit_price"]) / max(x["unit_price"], 1))
    tol = f"{Decimal(policy.price_tolerance.numerator) / policy.price_tolerance.denominator * 100:f}".rstrip("0").rstrip(".") + "%"
    return _signal(policy, "price_above_catalogue",
                   f"{sum(x['records'] for x in lines)} usage records ({sum(x['amount'] for x in lines)} fen) "
                   f"are priced more than {tol} above the provider's catalogue price; e.g. {worst['resource']} "
                   f"at {worst['paid_unit_price']} fen per {worst['unit']} against {worst['unit_price']}",
                   f"{sum(x['records'] for x in lines)}条用量（{sum(x['amount'] for x in lines)}分）单价高于"
                   f"服务商目录价{tol}以上；如{worst['resource']}每{worst['unit']}{worst['paid_unit_price']}分，"
                   f"目录价{worst['unit_price']}分",
                   price_tolerance=str(policy.price_tolerance), lines=list(lines))


def contract_signal(policy: RiskPolicy, uncovered: dict[str, Fen]) -> dict[str, Any] | None:
    """`no_contract`: metered usage (fen per provider) that ended on no day of a confirmed
    contract between the provider and the enterprise (validity dates inclusive)."""
    uncovered = {p: a for p, a in uncovered.items() if a > 0}
    if not uncovered:
        return None
    total = sum(uncovered.values())
    names = ", ".join(sorted(uncovered))
    return _signal(policy, "no_contract",
                   f"{total} fen of usage with {names} is not covered by a confirmed contract",
                   f"与{names}的{total}分用量没有已确认的合同覆盖",
                   amount=total, providers=dict(sorted(uncovered.items())))


def related_signal(policy: RiskPolicy, relations: dict[str, list[str]]) -> dict[str, Any] | None:
    """`related_party`: providers related to the enterprise — `relations` maps a provider to its
    reasons: "same_uscc" (the provider is the enterprise), "same_legal_representative", "link"
    (recorded by finance)."""
    relations = {p: r for p, r in relations.items() if r}
    if not relations:
        return None
    zh = {"same_uscc": "服务商即企业本身", "same_legal_representative": "法定代表人相同",
          "link": "财政局登记的关联关系"}
    en = {"same_uscc": "the provider is the enterprise itself",
          "same_legal_representative": "they share a legal representative",
          "link": "finance recorded them as related"}
    parts = [(p, r) for p, r in sorted(relations.items())]
    return _signal(policy, "related_party",
                   "Related-party purchase: " + "; ".join(f"{p}: {', '.join(en[x] for x in r)}" for p, r in parts),
                   "关联方交易：" + "；".join(f"{p}：{'、'.join(zh[x] for x in r)}" for p, r in parts),
                   providers={p: r for p, r in parts})


def ineligible_signal(policy: RiskPolicy, ineligible: Fen, metered: Fen, patterns: Sequence[str]
                      ) -> dict[str, Any] | None:
    """`ineligible_resource`: metered usage of resources outside `eligible_resources` (storage,
    network, …). It is left out of the base already; the signal tells the reviewer why."""
    if ineligible <= 0:
        return None
    return _signal(policy, "ineligible_resource",
                   f"{ineligible} of {metered} fen metered is for resources outside {list(patterns)}; "
                   "it is left out of the base",
                   f"计量的{metered}分中有{ineligible}分不属于可补贴资源（{'、'.join(patterns)}），不计入补贴基数",
                   amount=ineligible, metered=metered, eligible_resources=list(patterns))


def median(values: Iterable[Fen]) -> Fraction:
    v = sorted(values)
    if not v:
        return Fraction(0)
    mid = len(v) // 2
    return Fraction(v[mid]) if len(v) % 2 else Fraction(v[mid - 1] + v[mid], 2)


def spike_limit(policy: RiskPolicy, previous: Sequence[Fen]) -> Fraction:
    """The highest spend that is not a spike: max(spike_factor × median(previous), spike_floor)."""
    return max(policy.spike_factor * median(previous), Fraction(policy.spike_floor))


def spike_signal(policy: RiskPolicy, spend: Fen, previous: Sequence[Fen]) -> dict[str, Any] | None:
    """`usage_spike`: the enterprise's metered spend this month above spike_factor × the median
    of its previous three months (a month without usage counts 0), and above the floor. A first
    month (no usage in any of the three) is not a spike: there is nothing to compare with."""
    if not any(previous):
        return None
    limit = spike_limit(policy, previous)
    if spend <= limit:
        return None
    m = median(previous)
    return _signal(policy, "usage_spike",
                   f"Metered spend {spend} fen is above {policy.spike_factor} × the median of the previous "
                   f"three months ({_fen_text(m)} fen) and the floor of {policy.spike_floor} fen",
                   f"本月计量金额{spend}分，超过前三个月中位数（{_fen_text(m)}分）的{policy.spike_factor}倍"
                   f"及下限{policy.spike_floor}分",
                   spend=spend, previous=list(previous), median=str(m), spike_factor=str(policy.spike_factor),
                   spike_floor=policy.spike_floor, limit=str(limit))


def assess(policy: RiskPolicy, signals: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """`{score, signals}`: the score is the sum of the present signals' weights, at most 100."""
    found = [s for s in signals if s is not None]
    found.sort(key=lambda s: SIGNALS.index(s["code"]))
    return {"score": min(100, sum(s["weight"] for s in found)), "signals": found}


def needs_review(policy: RiskPolicy, risk: dict[str, Any]) -> bool:
    """Above the review threshold (strictly): a clean claim is flagged `risk_review`."""
    return risk["score"] > policy.review_threshold


def review_discrepancy(policy: RiskPolicy, risk: dict[str, Any]) -> dict[str, Any]:
    """The `risk_review` discrepancy of a clean claim or redemption above the threshold."""
    return {"code": Discrepancy.RISK_REVIEW,
            "message": f"Risk score {risk['score']} is above the review threshold {policy.review_threshold}: "
                       + ", ".join(x["code"] for x in risk["signals"]),
            "score": risk["score"], "review_threshold": policy.review_threshold}
