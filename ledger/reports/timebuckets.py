"""Calendar buckets (hour, day, week, month) in a time zone, as integer SQL expressions.

Every bucket is computed from an integer count of UTC seconds: ``epoch_hour * 3600``
for rollup rows, the entry's ``started_at`` for raw rows. The zone's UTC offset is a
``CASE`` over the offset changes inside the range, so "a day" is a local calendar day
(23 or 25 hours around daylight-saving changes) and "a month" a calendar month.

A bucket is identified by an integer key whose meaning depends on the granularity:
hour -> the UTC second the local hour starts (two distinct hours when clocks go
back), day -> local days since 1970-01-01, week -> ISO weeks (Monday) since then,
month -> ``year * 12 + month - 1``. :func:`bucket_start` turns a key back into a local
datetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import BigInteger, ColumnElement, case, literal

GRANULARITIES = ("hour", "day", "week", "month")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DATE = date(1970, 1, 1)
HOUR_S = 3600
DAY_S = 86_400
WEEK_S = 7 * DAY_S
# 1970-01-01 was a Thursday: shifting by three days makes weeks start on Monday.
_WEEK_SHIFT_S = 3 * DAY_S
_ONE_SECOND = timedelta(seconds=1)


class TimeZoneError(ValueError):
    """An unknown time zone name."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises :class:`TimeZoneError` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # OSError: a name too long for a file name, or a directory such as "America".
        raise TimeZoneError(f"unknown time zone {name[:100]!r}") from exc


def epoch_seconds(at: datetime) -> int:
    """Whole UTC seconds since 1970 (floored), exactly, without float arithmetic."""
    return (at - EPOCH) // _ONE_SECOND


def epoch_hour(at: datetime) -> int:
    """Whole UTC hours since 1970 (floored): the rollup bucket of an instant."""
    # From the timedelta's normalised parts (seconds in [0, 86400), days floored): the
    # same as ``// timedelta(hours=1)`` at half the cost, and it runs once per entry.
    since = at - EPOCH
    return since.days * 24 + since.seconds // HOUR_S


def from_epoch_seconds(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class OffsetChange:
    """From UTC second ``at`` on (until the next change), the zone is ``offset_s`` east of UTC."""

    at: int
    offset_s: int


def offset_changes(tz: ZoneInfo, since: datetime, until: datetime) -> list[OffsetChange]:
    """The zone's UTC offsets over ``[since, until)``: the first applies from ``since``.

    Changes are found to the second: day by day, then by bisection inside the day. No
    zone changes its offset twice within a day (the closest changes in tzdata are four
    days apart), and probing hourly made a report over centuries take tens of seconds.
    """
    start, end = epoch_seconds(since), epoch_seconds(until)
    changes = [OffsetChange(start, _offset(tz, start))]
    probe = start - start % DAY_S + DAY_S
    previous = start
    while probe <= end + DAY_S:
        offset = _offset(tz, probe)
        if offset != changes[-1].offset_s:
            low, high = previous, probe  # offset changes in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                if _offset(tz, middle) == offset:
                    high = middle
                else:
                    low = middle
            if high < end:
                changes.append(OffsetChange(high, offset))
        previous = probe
        probe += DAY_S
    return changes


def whole_hour_offsets(changes: list[OffsetChange]) -> bool:
    """True when hourly UTC rollups can be regrouped exactly into this zone's buckets."""
    return all(change.offset_s % HOUR_S == 0 for change in changes)


def _offset(tz: ZoneInfo, second: int) -> int:
    offset = from_epoch_seconds(second).astimezone(tz).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def bucket_key_expr(
    utc_seconds: ColumnElement[int],
    changes: list[OffsetChange],
    granularity: str,
    tz: ZoneInfo,
    until: datetime,
) -> ColumnElement[int]:
    """The integer bucket key of each row, given its UTC second as an SQL expression."""
    if granularity == "month":
        return _month_key_expr(utc_seconds, changes, until)
    offset = _offset_expr(utc_seconds, changes)
    local = utc_seconds + offset
    if granularity == "hour":
        return (local // HOUR_S) * HOUR_S - offset
    if granularity == "day":
        return local // DAY_S
    if granularity == "week":
        return (local + _WEEK_SHIFT_S) // WEEK_S
    raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")


def _month_key_expr(
    utc_seconds: ColumnElement[int], changes: list[OffsetChange], until: datetime
) -> ColumnElement[int]:
    """The local calendar month of each row, as one CASE over its UTC second.

    Each piece of ``[since, until)`` where both the offset and the local month hold is a
    WHEN: as many as months, plus a few around offset changes. (A CASE over local
    seconds repeated the offset CASE in every month's WHEN; compiling that took minutes
    for a report over a few decades in a zone with daylight saving time.)
    """
    pieces: list[tuple[int, int]] = []  # (first UTC second, month key), in order
    end = epoch_seconds(until)
    for change, following in zip(changes, [*changes[1:], None], strict=True):
        stop = following.at if following is not None else end
        at = change.at
        while at < stop:
            month = (EPOCH_DATE + timedelta(days=(at + change.offset_s) // DAY_S)).replace(day=1)
            if not pieces or pieces[-1][1] != _month_key(month):
                pieces.append((at, _month_key(month)))
            at = (_next_month(month) - EPOCH_DATE).days * DAY_S - change.offset_s
    whens = [(utc_seconds < starts, key) for (_, key), (starts, _) in pairwise(pieces)]
    if not whens:
        return literal(pieces[-1][1], BigInteger)
    return case(*whens, else_=pieces[-1][1])


def _offset_expr(
    utc_seconds: ColumnElement[int], changes: list[OffsetChange]
) -> ColumnElement[int]:
    if len(changes) == 1:
        return literal(changes[0].offset_s, BigInteger)
    whens = [
        (utc_seconds < following.at, current.offset_s) for current, following in pairwise(changes)
    ]
    return case(*whens, else_=changes[-1].offset_s)


def bucket_start(key: int, granularity: str, tz: ZoneInfo) -> datetime:
    """The local start of the bucket ``key`` (see :func:`bucket_key_expr`)."""
    if granularity == "hour":
        return from_epoch_seconds(key).astimezone(tz)
    if granularity == "day":
        day = EPOCH_DATE + timedelta(days=key)
    elif granularity == "week":
        day = EPOCH_DATE + timedelta(days=key * 7 - 3)
    elif granularity == "month":
        day = date(key // 12, key % 12 + 1, 1)
    else:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    return local_midnight(day, tz)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``tz`` (aware, in that zone)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC).astimezone(tz)


def _month_key(first_of_month: date) -> int:
    return first_of_month.year * 12 + first_of_month.month - 1


def _next_month(first_of_month: date) -> date:
    if first_of_month.month == 12:
        return date(first_of_month.year + 1, 1, 1)
    return date(first_of_month.year, first_of_month.month + 1, 1)
