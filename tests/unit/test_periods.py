"""Budget periods: calendar days, weeks, months and quarters in the budget's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ledger.budgets.periods import LIFETIME_START, PeriodError, period_bounds


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(zone: str, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        ("daily", utc(2026, 5, 13, 15, 30), utc(2026, 5, 13), utc(2026, 5, 14)),
        # 2026-05-13 is a Wednesday; weeks start on Monday.
        ("weekly", utc(2026, 5, 13, 15, 30), utc(2026, 5, 11), utc(2026, 5, 18)),
        ("weekly", utc(2026, 5, 17, 23, 59, 59), utc(2026, 5, 11), utc(2026, 5, 18)),
        ("monthly", utc(2026, 5, 13, 15, 30), utc(2026, 5, 1), utc(2026, 6, 1)),
        ("quarterly", utc(2026, 5, 13, 15, 30), utc(2026, 4, 1), utc(2026, 7, 1)),
    ],
)
def test_periods_in_utc_are_calendar_periods(
    period: str, at: datetime, start: datetime, end: datetime
) -> None:
    assert period_bounds(period, "UTC", at) == (start, end)


def test_bounds_come_back_in_utc_whatever_zone_the_instant_was_given_in() -> None:
    at = local("Asia/Tokyo", 2026, 5, 13, 9, 0)  # 2026-05-13 00:00 UTC
    start, end = period_bounds("daily", "UTC", at)
    assert (start, end) == (utc(2026, 5, 13), utc(2026, 5, 14))
    assert start.utcoffset() == timedelta(0) and end is not None and end.utcoffset() == timedelta(0)


def test_a_lifetime_budget_has_one_period_that_never_ends() -> None:
    for at in (utc(2026, 5, 13), utc(2099, 12, 31, 23, 59)):
        assert period_bounds("none", "America/New_York", at) == (LIFETIME_START, None)


def test_the_day_daylight_saving_starts_in_new_york_is_23_hours_long() -> None:
    # 2026-03-08: clocks go from 02:00 EST (-05:00) to 03:00 EDT (-04:00).
    start, end = period_bounds(
        "daily", "America/New_York", local("America/New_York", 2026, 3, 8, 12)
    )
    assert start == utc(2026, 3, 8, 5)
    assert end == utc(2026, 3, 9, 4)
    assert end - start == timedelta(hours=23)


def test_the_day_daylight_saving_ends_in_new_york_is_25_hours_long() -> None:
    # 2026-11-01: clocks go from 02:00 EDT (-04:00) back to 01:00 EST (-05:00).
    start, end = period_bounds("daily", "America/New_York", utc(2026, 11, 1, 5, 30))
    assert start == utc(2026, 11, 1, 4)
    assert end == utc(2026, 11, 2, 5)
    assert end - start == timedelta(hours=25)


def test_the_week_and_month_around_new_york_dst_changes_start_at_local_midnight() -> None:
    # The week of 2026-03-08 (Sunday) starts on Monday 2026-03-02, still in EST.
    start, end = period_bounds("weekly", "America/New_York", utc(2026, 3, 8, 12))
    assert (start, end) == (utc(2026, 3, 2, 5), utc(2026, 3, 9, 4))
    assert end - start == timedelta(days=7, hours=-1)
    start, end = period_bounds("monthly", "America/New_York", utc(2026, 11, 15))
    assert (start, end) == (utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))


def test_an_instant_that_is_already_tomorrow_in_utc_is_still_today_in_new_york() -> None:
    # 03:00 UTC on 1 July is 23:00 on 30 June in New York (EDT).
    at = utc(2026, 7, 1, 3)
    assert period_bounds("monthly", "America/New_York", at) == (
        utc(2026, 6, 1, 4),
        utc(2026, 7, 1, 4),
    )
    assert period_bounds("monthly", "UTC", at) == (utc(2026, 7, 1), utc(2026, 8, 1))


def test_london_months_follow_british_summer_time() -> None:
    # BST starts 2026-03-29 and ends 2026-10-25: April begins at 23:00 UTC on 31 March.
    assert period_bounds("monthly", "Europe/London", utc(2026, 3, 31, 23, 30)) == (
        utc(2026, 3, 31, 23),
        utc(2026, 4, 30, 23),
    )
    assert period_bounds("monthly", "Europe/London", utc(2026, 3, 31, 22, 59)) == (
        utc(2026, 3, 1),
        utc(2026, 3, 31, 23),
    )
    # October starts in summer time and ends in winter time.
    assert period_bounds("monthly", "Europe/London", utc(2026, 10, 31, 23, 59)) == (
        utc(2026, 9, 30, 23),
        utc(2026, 11, 1),
    )


def test_sydney_periods_begin_the_previous_utc_day() -> None:
    # January in Sydney is summer time (AEDT, +11:00).
    assert period_bounds("monthly", "Australia/Sydney", utc(2026, 1, 31, 14)) == (
        utc(2026, 1, 31, 13),
        utc(2026, 2, 28, 13),
    )
    # Daylight saving ends on 2026-04-05 (+11 to +10), so Q2 starts at +11 and ends at +10.
    assert period_bounds("quarterly", "Australia/Sydney", utc(2026, 5, 1)) == (
        utc(2026, 3, 31, 13),
        utc(2026, 6, 30, 14),
    )
    start, end = period_bounds("daily", "Australia/Sydney", utc(2026, 4, 5, 1))
    assert (start, end) == (utc(2026, 4, 4, 13), utc(2026, 4, 5, 14))
    assert end - start == timedelta(hours=25)


def test_kolkata_days_start_at_half_past_six_utc() -> None:
    # Asia/Kolkata is +05:30 all year.
    at = utc(2026, 5, 17, 20)  # 01:30 on 18 May in Kolkata
    assert period_bounds("daily", "Asia/Kolkata", at) == (
        utc(2026, 5, 17, 18, 30),
        utc(2026, 5, 18, 18, 30),
    )
    assert period_bounds("monthly", "Asia/Kolkata", utc(2026, 5, 31, 18, 30)) == (
        utc(2026, 5, 31, 18, 30),
        utc(2026, 6, 30, 18, 30),
    )


def test_february_of_a_leap_year_has_29_days() -> None:
    start, end = period_bounds("monthly", "UTC", utc(2028, 2, 29, 12))
    assert (start, end) == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert end - start == timedelta(days=29)
    assert period_bounds("daily", "UTC", utc(2028, 2, 29, 23, 59)) == (
        utc(2028, 2, 29),
        utc(2028, 3, 1),
    )
    start, end = period_bounds("monthly", "UTC", utc(2026, 2, 14))
    assert end - start == timedelta(days=28)


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 4, 1)),
        (utc(2026, 3, 31, 23, 59, 59, 999999), utc(2026, 1, 1), utc(2026, 4, 1)),
        (utc(2026, 4, 1), utc(2026, 4, 1), utc(2026, 7, 1)),
        (utc(2026, 6, 30, 12), utc(2026, 4, 1), utc(2026, 7, 1)),
        (utc(2026, 7, 1), utc(2026, 7, 1), utc(2026, 10, 1)),
        (utc(2026, 10, 1), utc(2026, 10, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 31, 23, 59), utc(2026, 10, 1), utc(2027, 1, 1)),
    ],
)
def test_quarters_are_january_april_july_and_october(
    at: datetime, start: datetime, end: datetime
) -> None:
    assert period_bounds("quarterly", "UTC", at) == (start, end)


def test_every_period_rolls_over_into_the_next_year() -> None:
    at = utc(2026, 12, 31, 23, 59, 59)  # a Thursday
    assert period_bounds("daily", "UTC", at) == (utc(2026, 12, 31), utc(2027, 1, 1))
    assert period_bounds("weekly", "UTC", at) == (utc(2026, 12, 28), utc(2027, 1, 4))
    assert period_bounds("monthly", "UTC", at) == (utc(2026, 12, 1), utc(2027, 1, 1))
    assert period_bounds("quarterly", "UTC", at) == (utc(2026, 10, 1), utc(2027, 1, 1))
    # New Year in New York comes five hours after New Year in UTC.
    assert period_bounds("monthly", "America/New_York", utc(2027, 1, 1, 4, 59)) == (
        utc(2026, 12, 1, 5),
        utc(2027, 1, 1, 5),
    )


@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "quarterly"])
@pytest.mark.parametrize(
    "tz", ["UTC", "America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata"]
)
def test_an_instant_exactly_on_a_boundary_belongs_to_the_new_period(period: str, tz: str) -> None:
    _, end = period_bounds(period, tz, utc(2026, 3, 7, 12))
    assert end is not None
    start, next_end = period_bounds(period, tz, end)
    assert start == end
    assert next_end is not None and next_end > end
    # One microsecond earlier is still the old period.
    assert period_bounds(period, tz, end - timedelta(microseconds=1))[1] == end


def test_periods_tile_time_without_gaps_across_a_whole_year() -> None:
    for tz in ("America/New_York", "Australia/Sydney"):
        at = utc(2026, 1, 1)
        for _ in range(366):
            start, end = period_bounds("daily", tz, at)
            assert end is not None and start <= at < end
            at = end
        assert at >= utc(2027, 1, 1)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(PeriodError, match="aware"):
        period_bounds("daily", "UTC", datetime(2026, 5, 13, 12))


def test_an_unknown_period_or_time_zone_is_refused() -> None:
    with pytest.raises(PeriodError, match="period"):
        period_bounds("yearly", "UTC", utc(2026, 5, 13))
    with pytest.raises(PeriodError, match="time zone"):
        period_bounds("daily", "Mars/Olympus_Mons", utc(2026, 5, 13))
