"""Calendar months in the reporting time zone: ``"2026-10"`` and its UTC bounds."""

from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

from ledger.reports.timebuckets import local_midnight

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class InvalidMonth(ValueError):
    """Text that is not a month written ``YYYY-MM``."""


def parse_month(text: str) -> date:
    """The first day of the month written ``YYYY-MM``; raises :class:`InvalidMonth`."""
    match = _MONTH.match(text.strip())
    if match is None:
        raise InvalidMonth(f"a month is written YYYY-MM (e.g. 2026-10), not {text!r}")
    return date(int(match[1]), int(match[2]), 1)


def month_label(first_of_month: date) -> str:
    """``"YYYY-MM"`` for a month."""
    return f"{first_of_month.year:04d}-{first_of_month.month:02d}"


def next_month(first_of_month: date) -> date:
    """The first day of the following month."""
    if first_of_month.month == 12:
        return date(first_of_month.year + 1, 1, 1)
    return date(first_of_month.year, first_of_month.month + 1, 1)


def month_bounds(first_of_month: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The month's ``[start, end)`` as aware datetimes: local midnights on the 1st."""
    return local_midnight(first_of_month, tz), local_midnight(next_month(first_of_month), tz)


def month_of(at: datetime, tz: ZoneInfo) -> date:
    """The month (its first day) that contains ``at`` in ``tz``."""
    return at.astimezone(tz).date().replace(day=1)


def next_label(label: str) -> str:
    """The month after ``label`` (both ``YYYY-MM``)."""
    return month_label(next_month(parse_month(label)))
