"""Billing months are Asia/Shanghai calendar months (docs/API.md#conventions)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
_PERIOD = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")


def period_of(moment: datetime) -> str:
    """The YYYY-MM that holds `moment` in Asia/Shanghai."""
    local = moment.astimezone(SHANGHAI)
    return f"{local.year:04d}-{local.month:02d}"


def parse_period(text: str) -> tuple[int, int]:
    m = _PERIOD.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a YYYY-MM period")
    return int(m.group(1)), int(m.group(2))


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
