"""The subsidy policy as pure arithmetic (Jiaxing "AI+" plan, §四(一) 提供算力支持).

Nothing here does I/O: the rules are plain functions of a frozen `Policy` and integers of
fen, so they can be property-tested by the thousand and reused by the reconciliation, the
quota read and the reports alike. Values live in `config/policies/*.toml` (loaded by
`billing.policy_file`), never in code. Interpretations of the policy text are written up in
docs/POLICY.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction

from billing.risk import RiskPolicy
from kernel import periods
from kernel.vocabulary import CapBasis, Discrepancy, Stacking

Fen = int

CAP_STANDARD = CapBasis.STANDARD
CAP_NEW_MODEL_FILING = CapBasis.NEW_MODEL_FILING
CAP_OUTSIDE_POLICY_WINDOW = CapBasis.OUTSIDE_POLICY_WINDOW

INVOICE_AMOUNT_MISMATCH = Discrepancy.INVOICE_AMOUNT_MISMATCH
USAGE_INVOICE_MISMATCH = Discrepancy.USAGE_INVOICE_MISMATCH

# The key the default programme's quota rows, postings and figures are kept under
# (docs/POLICY.md#programmes): stable across versions of its policy file (a new `id`), as the
# quota always was; every other programme's key is its id.
DEFAULT_PROGRAMME = "default"

# The provider kinds (docs/API.md#providers) of the city's catalogue (智算, 超算).
RESOURCE_KINDS = ("intelligent_computing", "supercomputing")


class PolicyError(ValueError):
    """A policy value is invalid. `key` names the offending field (or TOML key)."""

    def __init__(self, key: str | None, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        text = f"{key}: {message}" if key else message
        super().__init__(f"{source}: {text}" if source else text)


def round_half_up_fen(x: Fraction | Decimal | int) -> Fen:
    """Round an exact amount of fen to an integer fen, halves away from zero.

    Exact for Fraction, Decimal and int; floats are refused (they cannot hold 0.1 fen).
    Negative values round symmetrically (-0.5 → -1), like `decimal.ROUND_HALF_UP`, so
    `round_half_up_fen(-x) == -round_half_up_fen(x)` — a clawback of a rounded amount
    mirrors the grant it undoes.
    """
    if isinstance(x, bool) or not isinstance(x, (int, Fraction, Decimal)):
        raise TypeError(f"round_half_up_fen needs an exact number, got {type(x).__name__}")
    q = Fraction(x)  # exact; raises ValueError for Decimal NaN / Infinity
    whole, rest = divmod(abs(q.numerator), q.denominator)
    if 2 * rest >= q.denominator:
        whole += 1
    return -whole if q < 0 else whole


# Supported knob values; a policy file naming anything else is refused at load time.
ROUNDINGS: dict[str, Callable[[Fraction], Fen]] = {"round_half_up": round_half_up_fen}
# 就高不重复; 叠加 up to `stack_limit` of the spend; 排他 (docs/POLICY.md#programmes).
STACKINGS = tuple(s.value for s in Stacking)  # kernel/vocabulary.py Stacking
SETTLEMENT_MODES = ("reimbursement", "redemption")  # kernel/vocabulary.py SettlementMode


@dataclass(frozen=True)
class Policy:
    """One subsidy policy. Money in fen, dates inclusive in the policy's timezone."""

    id: str
    title_zh: str
    title_en: str
    document_no: str
    effective_from: date
    effective_until: date
    timezone: str
    rate: Fraction
    cap_standard: Fen
    cap_new_model_filing: Fen
    new_filing_years: int
    stacking: str
    rounding: str
    tolerance: Fen
    currency: str
    resource_kinds: tuple[str, ...]
    close_after_days: int = 90  # a period closes on its own this many days after its end (docs/API.md#period-close)
    # How the subsidy reaches the enterprise (docs/POLICY.md#settlement-modes); both draw on one quota.
    settlement_modes: tuple[str, ...] = ("reimbursement",)
    hold_days: int = 30  # an authorised redemption not captured within this many days expires
    budget_annual: Fen | None = None  # [budget] annual: the programme's yearly budget; None: unlimited (docs/API.md#budget)
    quota_thresholds: tuple[int, ...] = (80, 100)  # [alerts]: % of an enterprise's cap (docs/API.md#thresholds)
    budget_thresholds: tuple[int, ...] = (50, 80, 100)  # [alerts]: % of the annual budget
    # Risk review (docs/POLICY.md#risk): resource patterns whose usage counts toward the base
    # (empty: every resource), contracts required at push time, the [risk] table.
    eligible_resources: tuple[str, ...] = ()
    require_contracts: bool = False
    risk: RiskPolicy = field(default_factory=RiskPolicy)
    # Several programmes (docs/POLICY.md#programmes): who is eligible — enterprises registered in
    # one of `counties` (empty: every county) and, when given, only the listed USCCs — and, for
    # `stacking = "stack"`, the share of the spend all programmes together may pay.
    counties: tuple[str, ...] = ()
    enterprises: tuple[str, ...] = ()
    stack_limit: Fraction | None = None
    # Whose quota rows and postings the policy reads and writes: DEFAULT_PROGRAMME, or its id
    # when it runs beside the default one (set by billing/policy_file.py `Programmes`).
    programme: str = DEFAULT_PROGRAMME

    def __post_init__(self) -> None:
        # Checked here as well as in the loader so a policy built in code (or by
        # dataclasses.replace in a test) cannot carry a float rate or an inverted window.
        if not isinstance(self.rate, Fraction):
            raise PolicyError(
                "rate", f"must be a fractions.Fraction (exact), not {type(self.rate).__name__}"
            )
        if not 0 < self.rate <= 1:
            raise PolicyError("rate", f"must be > 0 and <= 1, got {self.rate}")
        for name in ("cap_standard", "cap_new_model_filing"):
            if not _is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise PolicyError(name, "must be a positive integer (fen)")
        if self.cap_new_model_filing < self.cap_standard:
            raise PolicyError(
                "cap_new_model_filing", f"must be >= cap_standard ({self.cap_standard} fen)"
            )
        if not _is_int(self.tolerance) or self.tolerance < 0:
            raise PolicyError("tolerance", "must be a non-negative integer (fen)")
        if not _is_int(self.close_after_days) or self.close_after_days < 1:
            raise PolicyError("close_after_days", "must be an integer >= 1 (days)")
        if not self.settlement_modes or any(m not in SETTLEMENT_MODES for m in self.settlement_modes) \
                or len(set(self.settlement_modes)) != len(self.settlement_modes):
            raise PolicyError("settlement_modes", f"must be a non-empty list of {list(SETTLEMENT_MODES)}, "
                                                  f"without repeats, got {list(self.settlement_modes)}")
        if not _is_int(self.hold_days) or self.hold_days < 1:
            raise PolicyError("hold_days", "must be an integer >= 1 (days)")
        if not _is_int(self.new_filing_years) or self.new_filing_years < 1:
            raise PolicyError("new_filing_years", "must be an integer >= 1")
        if self.effective_until < self.effective_from:
            raise PolicyError(
                "effective_until",
                f"{self.effective_until} is before effective_from {self.effective_from}",
            )
        if self.budget_annual is not None and (not _is_int(self.budget_annual) or self.budget_annual <= 0):
            raise PolicyError("budget_annual", "must be a positive integer (fen)")
        for name in ("quota_thresholds", "budget_thresholds"):
            values = getattr(self, name)
            if (not values or any(not _is_int(v) or not 0 < v <= 100 for v in values)
                    or list(values) != sorted(set(values))):
                raise PolicyError(name, "must be a non-empty ascending list of whole percentages, 1 to 100")
        if self.rounding not in ROUNDINGS:
            raise PolicyError(
                "rounding", f"must be one of {sorted(ROUNDINGS)}, got {self.rounding!r}"
            )
        if self.stacking not in STACKINGS:
            raise PolicyError(
                "stacking", f"must be one of {list(STACKINGS)}, got {self.stacking!r}"
            )
        if self.stacking == "stack" and self.stack_limit is None:
            raise PolicyError("stacking", '"stack" needs stack_limit, the share of the spend all '
                                          'programmes together may pay')
        if self.stacking != "stack" and self.stack_limit is not None:
            raise PolicyError("stack_limit", 'only with stacking = "stack"')
        if self.stack_limit is not None and (not isinstance(self.stack_limit, Fraction)
                                             or not 0 < self.stack_limit <= 1):
            raise PolicyError("stack_limit", "must be an exact fraction > 0 and <= 1")


@dataclass(frozen=True)
class ClaimAmounts:
    """The figures of one claim (docs/API.md#claim-arithmetic), all in fen."""

    base: Fen  # Σ item bases
    computed: Fen  # round(base × rate), once per claim
    payable_before_cap: Fen  # 就高不重复 without the cap: max(computed − other, 0)
    payable: Fen  # max(min(computed, remaining) − other, 0): the cap, then 就高不重复
    cap_reached: bool  # the quota cut the payable (payable < payable_before_cap)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fen(name: str, v: object) -> Fen:
    if not _is_int(v):
        raise TypeError(f"{name} must be an integer number of fen, got {type(v).__name__}")
    if v < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must not be negative, got {v}")
    return v  # type: ignore[return-value]


def year_in_window(policy: Policy, year: int) -> bool:
    """Whether calendar `year` has at least one day inside the policy window."""
    return date(year, 1, 1) <= policy.effective_until and date(year, 12, 31) >= policy.effective_from


def cap_for(policy: Policy, year: int, filing_dates: Iterable[date]) -> tuple[Fen, str]:
    """The annual cap of `year` and its basis (docs/API.md#quota): "standard",
    "new_model_filing", or 0 with "outside_policy_window" for a year with no day in the window.

    §四(一): 200万/year, 500万 for an enterprise that 新获得 (newly obtained) a generative-AI
    model filing. "Newly" = the filing's `obtained_on` falls in the year, or, with
    `new_filing_years = n`, in one of the n-1 years before it: Y <= year < Y + n — also when
    the filing predates effective_from, as long as `year` itself is a window year.
    """
    if not year_in_window(policy, year):
        return 0, CAP_OUTSIDE_POLICY_WINDOW
    for obtained_on in filing_dates:
        if obtained_on.year <= year < obtained_on.year + policy.new_filing_years:
            return policy.cap_new_model_filing, CAP_NEW_MODEL_FILING
    return policy.cap_standard, CAP_STANDARD


def remaining(cap: Fen, granted: Fen, reserved: Fen) -> Fen:
    """Quota still available in a year: cap − granted − reserved, never below 0."""
    return max(cap - granted - reserved, 0)


def thresholds_crossed(thresholds: Sequence[int], limit: Fen, before: Fen, after: Fen) -> list[int]:
    """The thresholds (whole % of `limit`) that use crosses going from `before` to `after` fen
    (docs/API.md#thresholds): t with before < t % of limit <= after. A re-run that changes
    nothing, or a fall, crosses none; a fall and a new rise crosses again. Limit 0: none."""
    if limit <= 0 or after <= before:
        return []
    return [t for t in thresholds if before * 100 < t * limit <= after * 100]


def period_dates(period: str) -> tuple[date, date]:
    """First and last day of a 'YYYY-MM' period. ValueError for anything else (kernel/periods.py)."""
    return periods.period_dates(period)


def in_window(policy: Policy, period: str) -> bool:
    """Whether a claim for `period` may be paid at all: the month overlaps the window.

    Interpretation (docs/POLICY.md): 2025-05 is in window although the plan took effect
    on 13 May; only the usage of that month that ended on/after effective_from counts
    (`usage_in_window`).
    """
    first, last = period_dates(period)
    return first <= policy.effective_until and last >= policy.effective_from


def usage_in_window(policy: Policy, ended_on: date) -> bool:
    """Whether usage that ended on this local (policy-timezone) date is eligible.

    本行动计划自公布之日起施行，有效期至2027年12月31日 — both ends inclusive.
    """
    return policy.effective_from <= ended_on <= policy.effective_until


def window_bounds(policy: Policy) -> tuple[datetime, datetime]:
    """`usage_in_window` as an instant range [start, end) in the policy's timezone, for queries:
    a moment `t` is in window exactly when start <= t < end."""
    tz = periods.zone(policy.timezone)
    start = datetime.combine(policy.effective_from, time.min, tz)
    end = datetime.combine(policy.effective_until + timedelta(days=1), time.min, tz)
    return start, end


def listing_bounds(policy: Policy, listed_from: date | None, listed_until: date | None
                   ) -> tuple[datetime, datetime]:
    """`window_bounds` narrowed to a provider's listing (both dates inclusive, None = open):
    usage of that provider counts toward the eligible metered amount exactly when it ended
    (policy-timezone date) inside both. An empty range has start >= end."""
    start, end = window_bounds(policy)
    tz = periods.zone(policy.timezone)
    if listed_from is not None:
        start = max(start, datetime.combine(listed_from, time.min, tz))
    if listed_until is not None:
        end = min(end, datetime.combine(listed_until + timedelta(days=1), time.min, tz))
    return start, end


def within_tolerance(policy: Policy, a: Fen, b: Fen) -> bool:
    """Reconciliation checks 5.2 and 5.4 (docs/API.md#rec-steps): two amounts agree when they differ by at most the tolerance."""
    return abs(a - b) <= policy.tolerance


def item_base(
    policy: Policy,
    amount_paid: Fen,
    invoice_amount: Fen,
    metered: Fen,
    eligible_metered: Fen | None = None,
) -> tuple[Fen, list[str]]:
    """The base of one claim item (docs/API.md#rec-steps, steps 5.2, 5.4 and 6) and its discrepancy codes.

    `metered` is the month's non-void usage for (provider, enterprise, period), compared
    with the invoice. `eligible_metered` is the part of it that ended inside the window
    (defaults to `metered`); it bounds the base, so in the first month only usage from
    effective_from on is subsidised without flagging an invoice that covers the whole
    month. A clean item's base is the least of the three amounts; any discrepancy → 0.
    """
    _fen("amount_paid", amount_paid)
    _fen("invoice_amount", invoice_amount)
    _fen("metered", metered)
    eligible = metered if eligible_metered is None else _fen("eligible_metered", eligible_metered)
    if eligible > metered:
        raise ValueError(f"eligible_metered ({eligible}) exceeds metered ({metered})")
    codes: list[str] = []
    if not within_tolerance(policy, amount_paid, invoice_amount):
        codes.append(INVOICE_AMOUNT_MISMATCH)
    if not within_tolerance(policy, metered, invoice_amount):
        codes.append(USAGE_INVOICE_MISMATCH)
    if codes:
        return 0, codes
    # §四(一): subsidy on 实际使用金额 — the least of what was paid, invoiced and metered.
    return min(amount_paid, invoice_amount, eligible), codes


def compute_claim(
    policy: Policy, item_bases: Sequence[Fen], other_subsidies: Sequence[Fen], remaining: Fen,
    held: Fen = 0,
) -> ClaimAmounts:
    """The subsidy of one claim (docs/API.md#claim-arithmetic), given its item bases and the
    quota available to it: the year's remaining quota plus `held`, what the claim already holds.

    Rounds once per claim, so splitting a claim into items never gains or loses a fen.
    `remaining` may be negative (a cap lowered below what is used); it counts as 0. The cap
    alone never cuts a claim below what it holds while its own figures still support that
    (`min(held, max(computed − other, 0))`): quota reserved or granted in an earlier run is not
    taken back because later claims used the rest, so a re-run with nothing changed moves nothing.
    """
    base = sum(_fen(f"item_bases[{i}]", b) for i, b in enumerate(item_bases))
    other = sum(_fen(f"other_subsidies[{i}]", o) for i, o in enumerate(other_subsidies))
    if not _is_int(remaining):
        raise TypeError(
            f"remaining must be an integer number of fen, got {type(remaining).__name__}"
        )
    # §四(一): 按照实际使用金额的50%给予算力补贴 — rate × base, rounded once.
    computed = ROUNDINGS[policy.rounding](base * policy.rate)
    payable_before_cap = max(computed - other, 0)
    kept = min(_fen("held", held), payable_before_cap)
    payable = max(stacked_payable(computed, remaining, other), kept)
    return ClaimAmounts(base, computed, payable_before_cap, payable, payable < payable_before_cap)


def kept_hold(policy: Policy, item_bases: Sequence[Fen], other_subsidies: Sequence[Fen], held: Fen) -> Fen:
    """What an open claim keeps of its hold at a run however little quota is left
    (docs/API.md#rec-steps, step 3): `compute_claim` with nothing available beyond the hold,
    i.e. `min(held, payable_before_cap)`. A run never pays the claim less, and pays it more only
    from the quota left; so what a claim gives back (`held − kept`) does not depend on the
    other claims, and the run releases it before any claim takes quota."""
    return compute_claim(policy, item_bases, other_subsidies, held, held=held).payable


def stacked_payable(computed: Fen, remaining: Fen, other: Fen) -> Fen:
    """就高不重复 with the cap (docs/API.md#claim-arithmetic): `max(min(computed, remaining) − other, 0)`.

    What this programme would pay on its own, cap included (年度算力补贴金额不超过200万元/500万元),
    is compared with the other subsidies on the same spend and only the difference is topped
    up, so the enterprise ends with the higher of the two, never both — also when the cap
    binds. A negative `remaining` counts as 0.
    """
    return max(min(computed, max(remaining, 0)) - other, 0)


def approved_item_base(amount_paid: Fen, invoice_amount: Fen | None, eligible_metered: Fen) -> Fen:
    """An approved claim's item base at a re-run (docs/API.md#clawbacks): the least of paid,
    invoiced and the eligible usage metered now — not zeroed for discrepancies, since a person
    approved them; 0 without an invoice."""
    if invoice_amount is None:
        return 0
    return min(_fen("amount_paid", amount_paid), _fen("invoice_amount", invoice_amount),
               _fen("eligible_metered", eligible_metered))


def recomputed_grant(policy: Policy, item_bases: Sequence[Fen], other_subsidies: Sequence[Fen],
                     remaining: Fen, granted: Fen) -> Fen:
    """What an approved claim keeps after a re-run (docs/API.md#clawbacks): its figures
    recomputed (rate, rounding, the cap with its own grant counted as available, 就高不重复),
    never more than it was granted. `remaining` is the year's remaining quota without it."""
    _fen("granted", granted)
    available = max(remaining, 0) + granted
    return min(compute_claim(policy, item_bases, other_subsidies, available, held=granted).payable, granted)


def programme_covers(policy: Policy, county: str | None, uscc: str) -> bool:
    """Whether an enterprise registered in `county` may claim under the programme
    (docs/POLICY.md#programmes): its county among `counties` (none listed: every county) and,
    when the programme lists enterprises, its USCC among them."""
    if policy.counties and county not in policy.counties:
        return False
    return not policy.enterprises or uscc in policy.enterprises


@dataclass(frozen=True)
class Offer:
    """What one programme would pay a claim on its own (cap, budget and declared other
    subsidies included), and what its stacking rule needs to combine it with the others."""

    programme_id: str
    stacking: str
    effective_from: date
    alone: Fen
    spend: Fen = 0  # the claim's base under this programme (`stack`: the limit's unit)
    stack_limit: Fraction | None = None


def _first(offers: Iterable[Offer]) -> Offer:
    """The offer that pays under 就高: the highest amount, ties to the earliest effective_from
    (then the programme id, so the choice never depends on the order given)."""
    return min(offers, key=lambda o: (-o.alone, o.effective_from, o.programme_id))


def stack_offers(offers: Sequence[Offer]) -> dict[str, Fen]:
    """Combine the programmes' offers on one claim (docs/POLICY.md#programmes): what each
    programme pays, by id. Pure; every amount is at most the programme's `alone`.

    - `highest_not_both` (就高不重复): of these programmes only the highest pays its whole
      amount (ties: the earliest `effective_from`); the others pay 0.
    - `stack` (叠加): each adds on top of what is already paid — the 就高 winner first, then
      the `stack` programmes by `effective_from` — as long as the running total stays within
      floor(`stack_limit` × its spend), and within the limit of every `stack` programme that
      paid before it; it pays what fits, possibly 0.
    - `exclusive` (排他): pays alone or not at all. The enterprise gets the best admissible
      outcome: the highest exclusive offer alone, or the others combined as above, whichever
      total is higher (a tie goes to the side with the earlier `effective_from`).
    """
    for o in offers:
        _fen(f"alone[{o.programme_id}]", o.alone)
    paid = {o.programme_id: 0 for o in offers}
    if not offers:
        return paid
    shared = [o for o in offers if o.stacking != "exclusive"]
    combined: dict[str, Fen] = dict(paid)
    highest = [o for o in shared if o.stacking == "highest_not_both"]
    total = 0
    if highest:
        top = _first(highest)
        combined[top.programme_id] = total = top.alone
    ceiling: Fen | None = None  # the lowest limit of the stack programmes that paid so far
    for o in sorted((o for o in shared if o.stacking == "stack"),
                    key=lambda o: (o.effective_from, o.programme_id)):
        limit = (o.spend * o.stack_limit.numerator) // o.stack_limit.denominator  # ≤ limit × spend
        room = limit if ceiling is None else min(limit, ceiling)
        combined[o.programme_id] = max(min(o.alone, room - total), 0)
        if combined[o.programme_id] > 0:
            total += combined[o.programme_id]
            ceiling = room
    exclusive = [o for o in offers if o.stacking == "exclusive"]
    if not exclusive:
        return combined
    best = _first(exclusive)
    payers = [o for o in shared if combined[o.programme_id] > 0]
    earliest = min((o.effective_from for o in payers), default=None)
    if best.alone > total or (best.alone == total and best.alone > 0
                              and (earliest is None or best.effective_from <= earliest)):
        return {**paid, best.programme_id: best.alone}
    return combined


def refuse_unless_mode(policy: Policy, mode: str) -> None:
    """Invalid `settlement_mode_disabled` unless the policy enables settlement `mode`
    (`reimbursement`: claims; `redemption`: redemptions at the provider)."""
    from kernel.errors import Invalid

    if mode not in policy.settlement_modes:
        raise Invalid("settlement_mode_disabled", f"Policy {policy.id} does not enable settlement by {mode} "
                      f"(settlement_modes = {list(policy.settlement_modes)})", None)


def redemption_hold(policy: Policy, list_amount: Fen, remaining: Fen) -> Fen:
    """What an authorisation holds (docs/API.md#redemptions): the rate on the list amount,
    rounded half up to the fen, cut to what remains of the quota (a partial hold when short)."""
    return max(min(ROUNDINGS[policy.rounding](Fraction(list_amount) * policy.rate), remaining), 0)


def redemption_capture(policy: Policy, amount: Fen, held: Fen) -> Fen:
    """The subsidy of a capture: the rate on the captured amount, never above the hold."""
    return max(min(ROUNDINGS[policy.rounding](Fraction(amount) * policy.rate), held), 0)


def redemption_base(amount: Fen, invoice_amount: Fen, eligible_metered: Fen) -> Fen:
    """A clean captured redemption's base, as a claim item's (docs/API.md#rec-steps, step 5)."""
    return max(min(amount, invoice_amount, eligible_metered), 0)
