"""kernel/periods.py, the one period module: syntax and timezone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kernel import periods


@pytest.mark.parametrize("text", ["2000-01", "2026-10", "2100-12"])
def test_valid_periods(text):
    assert periods.format_period(*periods.parse_period(text)) == text


@pytest.mark.parametrize("text", ["1999-12", "2101-01", "2026-13", "2026-00", "2026-1", "2026-10\n",
                                  " 2026-10", "２０２６-10", "2026-١٠", "2026/10", "", None, 202610])
def test_invalid_periods(text):
    with pytest.raises(ValueError):
        periods.parse_period(text)
    assert not periods.is_period(text)


def test_timezone_is_a_parameter():
    moment = datetime(2026, 10, 31, 17, 0, tzinfo=UTC)  # 1 November 01:00 in Shanghai
    assert periods.period_of(moment) == periods.period_of(moment, "Asia/Shanghai") == "2026-11"
    assert periods.period_of(moment, "UTC") == "2026-10"
    assert periods.period_bounds("2026-11", "UTC")[0] == datetime(2026, 11, 1, tzinfo=UTC)
    assert periods.shift_period("2026-12", 1) == "2027-01"
    assert periods.shift_period("2026-01", -1) == "2025-12"
    assert periods.period_dates("2028-02")[1].day == 29
