"""Calendar periods in a budget's own time zone: daily, weekly, monthly, quarterly, none.

Boundaries are local midnights converted to UTC, so a "day" in a zone that changes
to or from daylight saving time is 23 or 25 hours long, and a "month" is a calendar
month, never 30 days.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("daily", "weekly", "monthly", "quarterly", "none")
# A lifetime (prepaid) budget has one period that starts at the epoch and never ends.
LIFETIME_START = datetime(1970, 1, 1, tzinfo=UTC)


class PeriodError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a name too long
        raise PeriodError(f"unknown time zone {name!r}") from exc


def period_bounds(period: str, tz: str, at: datetime) -> tuple[datetime, datetime | None]:
    """The UTC ``[start, end)`` of the ``period`` containing ``at``; ``end`` is None for "none"."""
    if at.tzinfo is None:
        raise PeriodError("period_bounds needs an aware datetime")
    if period == "none":
        return LIFETIME_START, None
    latest = _latest.get((period, tz))
    if latest is not None and latest[1] is not None and latest[0] <= at < latest[1]:
        return latest
    bounds = _bounds_of_day(period, tz, at.astimezone(zone(tz)).date())
    _latest[(period, tz)] = bounds
    return bounds


# Every request asks for the bounds of each budget it falls under, and they change once a
# day at most: the latest answer per period and zone is kept, and checked by comparison
# alone (no zone conversion), and answers for other days are kept too.
_latest: dict[tuple[str, str], tuple[datetime, datetime | None]] = {}


@functools.lru_cache(maxsize=1024)
def _bounds_of_day(period: str, tz: str, day: date) -> tuple[datetime, datetime | None]:
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":  # ISO weeks start on Monday
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        end = _add_months(start, 1)
    elif period == "quarterly":
        start = date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
        end = _add_months(start, 3)
    else:
        raise PeriodError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    return _local_midnight(start, tz), _local_midnight(end, tz)


def _add_months(first_of_month: date, months: int) -> date:
    index = first_of_month.month - 1 + months
    return date(first_of_month.year + index // 12, index % 12 + 1, 1)


def _local_midnight(day: date, tz: str) -> datetime:
    # Midnight always exists in the zones Ledger supports, except in a few where DST
    # starts at midnight; fold=0 then resolves to the first valid instant after it.
    local = datetime(day.year, day.month, day.day, tzinfo=zone(tz))
    return local.astimezone(UTC)
