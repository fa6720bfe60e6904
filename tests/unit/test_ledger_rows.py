"""Ledger rows as ``insert_entries`` binds them: the same values SQLAlchemy's types would bind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import Dialect

from ledger.db.ledger import _INSERT_COLUMNS, LedgerEntry, _converters
from ledger.db.tables import LedgerEntryRow
from ledger.reports.timebuckets import epoch_hour

INSTANTS = [
    datetime(2026, 12, 5, 16, 4, 5, 123456, tzinfo=UTC),
    datetime(2026, 12, 5, 16, 4, 5, tzinfo=UTC),  # no microseconds: still six zeros
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    datetime(2027, 1, 1, 0, 59, 59, 999999, tzinfo=timezone(timedelta(hours=14))),
    datetime(1, 1, 1, 0, 0, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), asyncpg.dialect()], ids=["sqlite", "pg"])
def test_timestamps_bind_as_the_column_type_binds_them(dialect: Dialect) -> None:
    # What SQLite stores is text: a different spelling would sort and compare differently
    # from every row written by SQLAlchemy's own path (reports, corrections, migrations).
    converters = dict(_converters(dialect))
    for name in ("started_at", "ended_at", "first_token_at"):
        index = _INSERT_COLUMNS.index(name)
        column_type = LedgerEntryRow.__table__.c[name].type
        reference = column_type.dialect_impl(dialect).bind_processor(dialect)
        assert reference is not None
        for instant in INSTANTS:
            assert converters[index](instant) == reference(instant), (name, instant)
        assert converters[index](None) is None
        with pytest.raises(ValueError, match="naive"):
            converters[index](datetime(2026, 12, 5, 16, 4))


def test_stored_sqlite_text_is_the_utc_instant() -> None:
    entry = LedgerEntry(
        request_id="req_x",
        started_at=datetime(2026, 12, 5, 18, 0, tzinfo=timezone(timedelta(hours=2))),
        endpoint="chat.completions",
    )
    values = entry.as_values()
    for index, convert in _converters(sqlite.dialect()):
        values[index] = convert(values[index])
    row = dict(zip(_INSERT_COLUMNS, values, strict=True))
    assert row["started_at"] == "2026-12-05 16:00:00.000000"
    assert row["ended_at"] == "2026-12-05 16:00:00.000000"  # not ended: as started
    assert row["first_token_at"] is None


@pytest.mark.parametrize(
    ("instant", "hour"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 59, 59, 999999, tzinfo=UTC), 0),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),  # floored, not truncated
        (datetime(2026, 12, 5, 17, 0, tzinfo=UTC), 499_025),
        (datetime(2026, 12, 5, 18, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))), 499_025),
    ],
)
def test_the_rollup_hour_of_an_instant(instant: datetime, hour: int) -> None:
    assert epoch_hour(instant) == hour
