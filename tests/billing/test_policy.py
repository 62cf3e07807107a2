"""The pure policy engine: examples named for behaviour, then hypothesis properties.

Figures come from the shipped policy (load_policy()), not from copies of the file; a test
that needs a specific rate or tolerance says so with dataclasses.replace.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing.policy import (
    CAP_NEW_MODEL_FILING,
    CAP_OUTSIDE_POLICY_WINDOW,
    CAP_STANDARD,
    INVOICE_AMOUNT_MISMATCH,
    USAGE_INVOICE_MISMATCH,
    ClaimAmounts,
    PolicyError,
    cap_for,
    compute_claim,
    in_window,
    item_base,
    kept_hold,
    period_dates,
    remaining,
    round_half_up_fen,
    usage_in_window,
)
from billing.policy_file import load_policy

POLICY = load_policy()
HALF = dataclasses.replace(POLICY, rate=Fraction(1, 2))
UNBOUNDED = 10**15

fen = st.integers(min_value=0, max_value=10**11)
small_fen = st.integers(min_value=0, max_value=10**7)
rates = st.fractions(min_value=Fraction(1, 1000), max_value=1, max_denominator=1000).filter(
    lambda r: r > 0
)
policies = st.builds(
    lambda rate, cap, extra, tol, years: dataclasses.replace(
        POLICY,
        rate=rate,
        cap_standard=cap,
        cap_new_model_filing=cap + extra,
        tolerance=tol,
        new_filing_years=years,
    ),
    rates,
    st.integers(1, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10_000),
    st.integers(1, 5),
)


def half_up_oracle(base: int, rate: Fraction) -> int:
    """floor(base × rate + ½) in integers: an independent statement of half-up."""
    return (2 * base * rate.numerator + rate.denominator) // (2 * rate.denominator)


# --- rounding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, expected", [(0, 0), (1, 1), (2, 1), (3, 2), (5, 3), (1_000_001, 500_001)]
)
def test_half_of_an_odd_fen_rounds_up(base, expected):
    assert compute_claim(HALF, [base], [], UNBOUNDED).computed == expected


def test_rounding_is_symmetric_for_negative_amounts():
    assert round_half_up_fen(Fraction(-1, 2)) == -1
    assert round_half_up_fen(Fraction(-3, 2)) == -2
    assert round_half_up_fen(Decimal("-2.4")) == -2


def test_rounding_refuses_floats():
    with pytest.raises(TypeError):
        round_half_up_fen(0.5)  # type: ignore[arg-type]


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=4, allow_nan=False))
def test_rounding_matches_decimal_round_half_up(x):
    assert round_half_up_fen(x) == int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@given(st.fractions(min_value=-(10**9), max_value=10**9, max_denominator=10**6))
def test_rounding_is_within_half_a_fen_and_odd(x):
    r = round_half_up_fen(x)
    assert abs(x - r) <= Fraction(1, 2)
    assert round_half_up_fen(-x) == -r


@given(st.integers(0, 10**12))
def test_claim_rounds_half_up_at_every_fen(base):
    assert compute_claim(HALF, [base], [], UNBOUNDED).computed == (base + 1) // 2


# --- compute_claim ----------------------------------------------------------------------


def test_clean_claim_pays_the_policy_rate_of_the_base():
    a = compute_claim(POLICY, [600_000, 400_000], [], POLICY.cap_standard)
    expected = round_half_up_fen(1_000_000 * POLICY.rate)
    assert a == ClaimAmounts(1_000_000, expected, expected, expected, False)


def test_rate_is_applied_once_per_claim_not_per_item():
    # Per item, 1 and 1 fen would each round up to 1; once per claim, 2 × ½ = 1.
    assert compute_claim(HALF, [1, 1], [], UNBOUNDED).computed == 1


def test_other_subsidy_on_the_same_spend_is_subtracted():
    a = compute_claim(HALF, [100_000], [30_000], UNBOUNDED)
    assert (a.computed, a.payable_before_cap, a.payable) == (50_000, 20_000, 20_000)


def test_higher_other_subsidy_leaves_nothing_to_pay():
    a = compute_claim(HALF, [10_000], [9_000], UNBOUNDED)
    assert (a.computed, a.payable) == (5_000, 0)
    assert not a.cap_reached


def test_payable_is_cut_to_the_remaining_quota():
    a = compute_claim(POLICY, [POLICY.cap_standard * 4], [], 123)
    assert a.payable == 123 and a.cap_reached


def test_negative_remaining_counts_as_zero():
    a = compute_claim(POLICY, [1_000], [], -50)
    assert a.payable == 0 and a.cap_reached


def test_nothing_to_pay_is_not_a_reached_cap():
    assert not compute_claim(POLICY, [0], [], 0).cap_reached


@pytest.mark.parametrize(
    "bases, others, exc",
    [
        ([-1], [], ValueError),
        ([1], [-1], ValueError),
        ([1.0], [], TypeError),
        ([Decimal(1)], [], TypeError),
        ([True], [], TypeError),
    ],
)
def test_invalid_amounts_are_refused(bases, others, exc):
    with pytest.raises(exc):
        compute_claim(POLICY, bases, others, UNBOUNDED)


def test_remaining_must_be_integer_fen():
    with pytest.raises(TypeError):
        compute_claim(POLICY, [1], [], 1.5)  # type: ignore[arg-type]


@given(
    policies, st.lists(fen, max_size=8), st.lists(fen, max_size=3), st.integers(-(10**9), 10**10)
)
def test_payable_is_never_negative_nor_above_remaining(policy, bases, others, left):
    a = compute_claim(policy, bases, others, left)
    assert 0 <= a.payable <= max(left, 0)
    assert a.payable <= a.payable_before_cap <= a.computed
    assert a.cap_reached == (a.payable < a.payable_before_cap)
    assert a.base == sum(bases)
    assert a.computed == half_up_oracle(sum(bases), policy.rate)


@given(
    policies,
    st.lists(fen, min_size=1, max_size=8),
    st.lists(fen, max_size=3),
    st.integers(0, 10**10),
    st.randoms(use_true_random=False),
)
def test_result_does_not_depend_on_item_order(policy, bases, others, left, rnd):
    shuffled, other_shuffled = bases[:], others[:]
    rnd.shuffle(shuffled)
    rnd.shuffle(other_shuffled)
    assert compute_claim(policy, bases, others, left) == compute_claim(
        policy, shuffled, other_shuffled, left
    )


@given(policies, st.lists(fen, max_size=8), st.lists(fen, max_size=3), fen, st.integers(-(10**9), 10**10))
def test_what_a_claim_gives_back_does_not_depend_on_the_quota_left(policy, bases, others, held, left):
    """docs/API.md#rec-steps, step 3: a run pays an open claim at least `kept_hold`
    (min(held, payable_before_cap)), and below its hold only exactly that, whatever quota is
    left — so a run can release held − kept before any claim takes quota."""
    kept = kept_hold(policy, bases, others, held)
    a = compute_claim(policy, bases, others, max(left, 0) + held, held=held)
    assert kept == min(held, a.payable_before_cap)
    assert a.payable >= kept
    assert a.payable >= held or a.payable == kept


@given(policies, st.lists(fen, max_size=5), st.lists(fen, max_size=3))
def test_highest_not_both_tops_up_to_the_higher_subsidy(policy, bases, others):
    """就高不重复: this programme plus the others = the higher of the two, never both."""
    a = compute_claim(policy, bases, others, UNBOUNDED)
    assert a.payable_before_cap == max(a.computed - sum(others), 0)
    assert a.payable + sum(others) == max(a.computed, sum(others))


@given(
    policies,
    st.booleans(),
    st.lists(st.tuples(st.lists(fen, max_size=4), st.lists(small_fen, max_size=2)), max_size=12),
)
def test_a_years_claims_never_pay_more_than_the_cap(policy, filed, claims):
    filings = [date(2026, 6, 1)] if filed else []
    cap, _ = cap_for(policy, 2026, filings)
    granted = reserved = 0
    wanted = 0
    for i, (bases, others) in enumerate(claims):
        a = compute_claim(policy, bases, others, remaining(cap, granted, reserved))
        # Alternate approved and still-reserved claims: both consume the quota.
        if i % 2:
            granted += a.payable
        else:
            reserved += a.payable
        wanted += a.payable_before_cap
        # v2 就高不重复 with the cap: this claim and its other subsidies together reach what this
        # programme alone would pay within the quota left, never more than the higher of the two.
        left = remaining(cap, granted, reserved) + a.payable
        assert a.payable + sum(others) >= min(a.computed, left)
        assert a.payable + sum(others) <= max(min(a.computed, left), sum(others))
    assert granted + reserved <= cap
    if not any(others for _, others in claims):
        # Without other subsidies, consuming sequentially loses nothing: min(cap, Σ wanted).
        assert granted + reserved == min(cap, wanted)


@given(policies, st.integers(0, 10**10), st.integers(1, 6), st.data())
def test_splitting_spend_across_claims_never_beats_the_cap(policy, spend, parts, data):
    cuts = sorted(
        data.draw(st.lists(st.integers(0, spend), min_size=parts - 1, max_size=parts - 1))
    )
    pieces = [b - a for a, b in zip([0, *cuts], [*cuts, spend], strict=True)]
    left = policy.cap_standard
    paid = 0
    for piece in pieces:
        p = compute_claim(policy, [piece], [], left).payable
        paid += p
        left -= p
    assert 0 <= paid <= policy.cap_standard
    assert paid <= compute_claim(policy, [spend], [], UNBOUNDED).computed + parts


# --- remaining --------------------------------------------------------------------------


@given(fen, fen, fen)
def test_remaining_is_cap_less_used_never_below_zero(cap, granted, reserved):
    r = remaining(cap, granted, reserved)
    assert r >= 0
    assert r == cap - granted - reserved or (r == 0 and granted + reserved >= cap)


# --- item_base (docs/API.md#rec-steps 5.2, 5.4, 6) --------------------------------------------------------


def test_clean_item_base_is_the_least_of_paid_invoiced_and_metered():
    tol = POLICY.tolerance
    assert item_base(POLICY, 10_000, 10_000 + tol, 10_000 + tol // 2) == (10_000, [])


def test_tolerance_boundary_is_inclusive():
    tol = POLICY.tolerance
    assert item_base(POLICY, 50_000 + tol, 50_000, 50_000)[1] == []
    assert item_base(POLICY, 50_000 + tol + 1, 50_000, 50_000) == (0, [INVOICE_AMOUNT_MISMATCH])
    assert item_base(POLICY, 50_000, 50_000, 50_000 - tol)[1] == []
    assert item_base(POLICY, 50_000, 50_000, 50_000 - tol - 1) == (0, [USAGE_INVOICE_MISMATCH])


def test_item_with_both_discrepancies_reports_both_and_has_no_base():
    tol = POLICY.tolerance
    base, codes = item_base(POLICY, 0, 10 * tol + 10, 0)
    assert base == 0 and codes == [INVOICE_AMOUNT_MISMATCH, USAGE_INVOICE_MISMATCH]


def test_only_usage_inside_the_window_bounds_the_base():
    # First month: the invoice covers all of May; only usage from 13 May is subsidised.
    assert item_base(POLICY, 90_000, 90_000, 90_000, eligible_metered=55_000) == (55_000, [])


def test_eligible_usage_cannot_exceed_metered_usage():
    with pytest.raises(ValueError):
        item_base(POLICY, 1, 1, 1, eligible_metered=2)


def test_negative_item_amounts_are_refused():
    with pytest.raises(ValueError):
        item_base(POLICY, -1, 0, 0)


@given(policies, fen, st.integers(-20_000, 20_000), st.integers(-20_000, 20_000))
def test_item_is_clean_exactly_within_tolerance(policy, invoiced, d_paid, d_metered):
    paid, metered = invoiced + d_paid, invoiced + d_metered
    assume(paid >= 0 and metered >= 0)
    base, codes = item_base(policy, paid, invoiced, metered)
    clean = abs(d_paid) <= policy.tolerance and abs(d_metered) <= policy.tolerance
    assert (codes == []) == clean
    assert base == (min(paid, invoiced, metered) if clean else 0)


# --- caps (新获得 a model filing) ----------------------------------------------------------


def test_no_filing_gives_the_standard_cap():
    assert cap_for(POLICY, 2026, []) == (POLICY.cap_standard, CAP_STANDARD)


def test_raised_cap_only_in_the_filing_year_by_default():
    one = dataclasses.replace(POLICY, new_filing_years=1)
    filings = [date(2026, 11, 30)]
    assert cap_for(one, 2025, filings) == (one.cap_standard, CAP_STANDARD)
    assert cap_for(one, 2026, filings) == (one.cap_new_model_filing, CAP_NEW_MODEL_FILING)
    assert cap_for(one, 2027, filings) == (one.cap_standard, CAP_STANDARD)


def test_two_filing_years_raise_the_next_year_too():
    two = dataclasses.replace(POLICY, new_filing_years=2)
    filings = [date(2025, 11, 30)]
    assert cap_for(two, 2025, filings)[1] == CAP_NEW_MODEL_FILING
    assert cap_for(two, 2026, filings)[1] == CAP_NEW_MODEL_FILING
    assert cap_for(two, 2027, filings)[1] == CAP_STANDARD
    # v2: a year with no day in the window has cap 0, whatever the filings (2028 here).
    assert cap_for(two, 2028, [date(2027, 11, 30)]) == (0, CAP_OUTSIDE_POLICY_WINDOW)


def test_any_of_several_filings_raises_the_cap():
    assert cap_for(POLICY, 2027, [date(2025, 6, 1), date(2027, 1, 1)])[1] == CAP_NEW_MODEL_FILING


@given(
    policies,
    st.integers(2020, 2035),
    st.lists(st.dates(date(2020, 1, 1), date(2035, 12, 31)), max_size=3),
)
def test_raised_cap_exactly_in_the_years_after_a_filing(policy, year, filings):
    cap, basis = cap_for(policy, year, filings)
    raised = any(0 <= year - d.year < policy.new_filing_years for d in filings)
    in_window_year = policy.effective_from.year <= year <= policy.effective_until.year
    assert (cap, basis) == (
        (0, CAP_OUTSIDE_POLICY_WINDOW)
        if not in_window_year
        else (policy.cap_new_model_filing, CAP_NEW_MODEL_FILING)
        if raised
        else (policy.cap_standard, CAP_STANDARD)
    )


# --- window -----------------------------------------------------------------------------


def _period(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def test_month_before_the_plan_is_outside_the_window():
    before = POLICY.effective_from.replace(day=1) - timedelta(days=1)
    assert not in_window(POLICY, _period(before))


def test_month_the_plan_took_effect_is_inside_the_window():
    assert in_window(POLICY, _period(POLICY.effective_from))
    assert in_window(POLICY, _period(POLICY.effective_until))


def test_month_after_the_plan_expired_is_outside_the_window():
    assert not in_window(POLICY, _period(POLICY.effective_until + timedelta(days=1)))


def test_usage_window_is_inclusive_at_both_ends():
    day = timedelta(days=1)
    assert not usage_in_window(POLICY, POLICY.effective_from - day)
    assert usage_in_window(POLICY, POLICY.effective_from)
    assert usage_in_window(POLICY, POLICY.effective_until)
    assert not usage_in_window(POLICY, POLICY.effective_until + day)


@pytest.mark.parametrize("period", ["2025-13", "2025-5", "25-05", "2025-05-01", "", None])
def test_malformed_period_is_refused(period):
    with pytest.raises(ValueError):
        in_window(POLICY, period)


@given(st.dates(date(2020, 1, 1), date(2032, 12, 31)))
def test_period_is_in_window_iff_one_of_its_days_is(d):
    first, last = period_dates(_period(d))
    days = (first + timedelta(days=i) for i in range((last - first).days + 1))
    assert in_window(POLICY, _period(d)) == any(usage_in_window(POLICY, x) for x in days)


# --- Policy invariants --------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"rate": 0.5}, "rate"),
        ({"rate": Fraction(3, 2)}, "rate"),
        ({"cap_standard": 0}, "cap_standard"),
        ({"cap_new_model_filing": 1}, "cap_new_model_filing"),
        ({"tolerance": -1}, "tolerance"),
        ({"new_filing_years": 0}, "new_filing_years"),
        ({"effective_until": date(2025, 1, 1)}, "effective_until"),
        ({"stacking": "stack"}, "stacking"),
        ({"rounding": "half_even"}, "rounding"),
    ],
)
def test_policy_refuses_invalid_values(change, key):
    with pytest.raises(PolicyError) as err:
        dataclasses.replace(POLICY, **change)
    assert err.value.key == key
