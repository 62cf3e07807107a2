"""Billing months are Asia/Shanghai calendar months (SPEC §3)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
_PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
FIRST_YEAR, LAST_YEAR = 2000, 2100  # the years a period can name


def period_of(moment: datetime) -> str:
    """The YYYY-MM that holds `moment` in Asia/Shanghai."""
    local = moment.astimezone(SHANGHAI)
    return f"{local.year:04d}-{local.month:02d}"


def parse_period(text: str) -> tuple[int, int]:
    """(year, month) of a 'YYYY-MM' period of the years 2000–2100; ValueError for anything
    else (a trailing newline, non-ASCII digits and year 0000 included). Every period that
    comes in — API, console, CLI, jobs, policy — is parsed here."""
    m = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a YYYY-MM period")
    year = int(m.group(1))
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"{text!r} is not a period of the years {FIRST_YEAR}–{LAST_YEAR}")
    return year, int(m.group(2))


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of the month in UTC."""
    year, month = parse_period(period)
    start = datetime(year, month, 1, tzinfo=SHANGHAI)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=SHANGHAI)
    return start.astimezone(UTC), end.astimezone(UTC)


def previous_period(moment: datetime) -> str:
    local = moment.astimezone(SHANGHAI)
    year, month = (local.year - 1, 12) if local.month == 1 else (local.year, local.month - 1)
    return f"{year:04d}-{month:02d}"


def period_start_date(period: str) -> date:
    year, month = parse_period(period)
    return date(year, month, 1)


def current_period(now: datetime | None = None) -> str:
    return period_of(now or datetime.now(UTC))
