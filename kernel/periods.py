"""Billing months: the one module that parses, formats and converts periods.

A period is `YYYY-MM`, ASCII digits only, matched whole (`re.fullmatch`), with a year from
2000 to 2100 (docs/API.md#conventions); anything else is invalid. A period is a calendar
month in the policy's timezone (`timezone` in config/policies/*.toml, Asia/Shanghai for the
shipped policy): callers that hold a policy pass `policy.timezone`; the default is the same
zone for the code paths that have no policy at hand (record ingestion, the job clock).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Asia/Shanghai"
SHANGHAI = ZoneInfo(DEFAULT_TIMEZONE)
MIN_YEAR, MAX_YEAR = 2000, 2100
PERIOD_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
MINUTE_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]")
DAY_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])-([0-3][0-9])")

Zone = tzinfo | str | None


@lru_cache(maxsize=16)
def _zone_named(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(tz: Zone = None) -> tzinfo:
    """A tzinfo from a name (a policy's `timezone`), a tzinfo, or None (the default zone)."""
    if tz is None:
        return SHANGHAI
    return _zone_named(tz) if isinstance(tz, str) else tz


def parse_period(text: str) -> tuple[int, int]:
    """(year, month) of a `YYYY-MM` period; ValueError for anything else."""
    m = PERIOD_RE.fullmatch(text) if isinstance(text, str) else None
    if not m or not MIN_YEAR <= int(m.group(1)) <= MAX_YEAR:
        raise ValueError(f"{text!r} is not a YYYY-MM period (years {MIN_YEAR}–{MAX_YEAR})")
    return int(m.group(1)), int(m.group(2))


def is_period(text: object) -> bool:
    try:
        parse_period(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def is_minute_key(text: str) -> bool:
    """A `YYYY-MM-DDTHH:MM` job period (minute_slot), with the same year range."""
    m = MINUTE_RE.fullmatch(text) if isinstance(text, str) else None
    return bool(m) and MIN_YEAR <= int(m.group(1)) <= MAX_YEAR


def parse_day(text: str) -> date:
    """The date of a `YYYY-MM-DD` job period (day_of), same year range; ValueError otherwise."""
    m = DAY_RE.fullmatch(text) if isinstance(text, str) else None
    if not m or not MIN_YEAR <= int(m.group(1)) <= MAX_YEAR:
        raise ValueError(f"{text!r} is not a YYYY-MM-DD day (years {MIN_YEAR}–{MAX_YEAR})")
    return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))  # ValueError for 2026-02-30


def is_day_key(text: str) -> bool:
    try:
        parse_day(text)
    except ValueError:
        return False
    return True


def format_period(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def period_year(period: str) -> int:
    return parse_period(period)[0]


def shift_period(period: str, months: int) -> str:
    """The period `months` later (earlier when negative)."""
    year, month = parse_period(period)
    n = year * 12 + month - 1 + months
    return format_period(n // 12, n % 12 + 1)


def year_periods(year: int) -> list[str]:
    """The twelve periods of a year, January first."""
    return [format_period(year, m) for m in range(1, 13)]


def period_dates(period: str) -> tuple[date, date]:
    """First and last day of the month."""
    year, month = parse_period(period)
    first = date(year, month, 1)
    following = date(year + month // 12, month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def period_start_date(period: str) -> date:
    return period_dates(period)[0]


def period_of(moment: datetime, tz: Zone = None) -> str:
    """The period that holds `moment` in the timezone."""
    local = moment.astimezone(zone(tz))
    return format_period(local.year, local.month)


def local_year(moment: datetime, tz: Zone = None) -> int:
    return moment.astimezone(zone(tz)).year


def period_bounds(period: str, tz: Zone = None) -> tuple[datetime, datetime]:
    """[start, end) of the month in UTC."""
    start, end = local_bounds(period, tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_bounds(period: str, tz: Zone = None) -> tuple[datetime, datetime]:
    """[start, end) of the month as aware datetimes in the timezone."""
    z = zone(tz)
    first = period_start_date(period)
    following = period_start_date(shift_period(period, 1))
    return datetime(first.year, first.month, 1, tzinfo=z), datetime(following.year, following.month, 1, tzinfo=z)


def previous_period(moment: datetime, tz: Zone = None) -> str:
    """The month before the one that holds `moment`."""
    local = moment.astimezone(zone(tz))
    year, month = (local.year - 1, 12) if local.month == 1 else (local.year, local.month - 1)
    return format_period(year, month)


def current_period(now: datetime | None = None, tz: Zone = None) -> str:
    return period_of(now or datetime.now(UTC), tz)


def minute_of(moment: datetime, tz: Zone = None) -> str:
    """`YYYY-MM-DDTHH:MM` of `moment` in the timezone (a job's minute slot)."""
    return moment.astimezone(zone(tz)).strftime("%Y-%m-%dT%H:%M")


def day_of(moment: datetime, tz: Zone = None) -> str:
    """`YYYY-MM-DD` of `moment` in the timezone (a daily job's period)."""
    return moment.astimezone(zone(tz)).strftime("%Y-%m-%d")


def date_of_month(d: date) -> str:
    """The period of a calendar date."""
    return format_period(d.year, d.month)
