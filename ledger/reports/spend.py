"""Spend over a time range: totals, groups and a calendar-aligned series, exact to the nano.

:func:`aggregate` is the one query both the spend report and the monthly report use.
It reads the hourly rollups for every whole UTC hour of the range (the smallest rollup
table that has every dimension grouped or filtered on: per team and model when that
is enough, else per team, key, model, provider and status), and raw ledger entries
only where rollups cannot answer:

- the partial hours at either edge of the range;
- a series in a zone whose UTC offset is not a whole number of hours (e.g. India,
  +05:30), where a local day does not start on a UTC hour: the whole range is raw;
- the ``user``, ``session`` and ``tag`` dimensions (group-by; ``user`` and ``tag`` as
  filters too), which rollups do not
  carry: the whole range is raw, narrowed by the ``started_at`` index.

Both sources produce the same integer sums (see ``rollups.METRICS``), merged
in Python, so a total is the same whichever way it was computed. An entry with
several tags counts once under each of its tags when grouping by tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.db.tables import ApiKey, LedgerEntryRow, PriceRow, Team
from ledger.errors import InvalidRequest
from ledger.reports import histogram, rollups
from ledger.reports.rollups import LEVELS, METRICS, RollupLevel, metrics_of
from ledger.reports.timebuckets import (
    DAY_S,
    GRANULARITIES,
    HOUR_S,
    OffsetChange,
    bucket_key_expr,
    bucket_start,
    epoch_hour,
    epoch_seconds,
    from_epoch_seconds,
    local_midnight,
    offset_changes,
    whole_hour_offsets,
    zone,
)

E = LedgerEntryRow
DIMENSIONS = (
    "team", "key", "user", "session", "model", "priced_model", "served_model", "provider",
    "status", "tag",
)  # fmt: skip
# ``model`` is the name the request sent (what rollups keep); ``priced_model`` the model of
# the price version the entry used (a dated snapshot or ``openai/…`` spelling groups under
# its model; unpriced entries under the name sent); ``served_model`` what the provider
# answered with (the snapshot). Read from raw entries: rollups do not carry them.
RAW_ONLY_DIMENSIONS = ("user", "session", "tag", "priced_model", "served_model")
MAX_BUCKETS = 10_000
OTHER = "(other)"

_ROLLUP_COLUMN = {
    "team": "team_id",
    "key": "key_id",
    "model": "model",
    "provider": "provider",
    "status": "status",
}
_PRICED = PriceRow.__table__.alias("priced")
_INDEX = {name: index for index, name in enumerate(METRICS)}
_LATENCY = slice(_INDEX[rollups.LATENCY_COLUMNS[0]], _INDEX[rollups.LATENCY_COLUMNS[-1]] + 1)


@dataclass(frozen=True, slots=True)
class SpendFilters:
    """Keep only entries matching every non-empty filter (any of its values)."""

    team_ids: tuple[int, ...] = ()
    key_ids: tuple[int, ...] = ()
    users: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def needs_raw(self) -> bool:
        return bool(self.users or self.tags)


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """What to add up: a half-open UTC range, a series granularity, dimensions, filters."""

    since: datetime
    until: datetime
    timezone: str = "UTC"
    granularity: str | None = "day"
    group_by: tuple[str, ...] = ()
    filters: SpendFilters = SpendFilters()
    top: int | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            if getattr(self, name).tzinfo is None:
                raise InvalidRequest(f"{name} needs a UTC offset, e.g. 2026-10-01T00:00:00Z")
        if self.until < self.since:
            raise InvalidRequest("until must not be before since")
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise InvalidRequest(f"granularity must be one of {', '.join(GRANULARITIES)}")
        unknown = [name for name in self.group_by if name not in DIMENSIONS]
        if unknown:
            raise InvalidRequest(
                f"cannot group by {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}"
            )
        if len(set(self.group_by)) != len(self.group_by):
            raise InvalidRequest("group_by names a dimension twice")
        if self.top is not None and self.top < 1:
            raise InvalidRequest("top must be at least 1")
        try:
            zone(self.timezone)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc


@dataclass(slots=True)
class Sums:
    """Integer sums in ``METRICS`` order, with the figures reports show."""

    values: list[int] = field(default_factory=lambda: [0] * len(METRICS))
    # Entries whose provider reported its own cost (OpenRouter's usage.cost): how many,
    # the provider's sum, and Ledger's own cost of those same entries. Groups and totals
    # only (not the series).
    provider_costed: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, other: Sequence[int]) -> None:
        for index, value in enumerate(other):
            self.values[index] += value

    def add_provider_cost(self, other: Sequence[int]) -> None:
        for index, value in enumerate(other):
            self.provider_costed[index] += value

    def __getitem__(self, name: str) -> int:
        return self.values[_INDEX[name]]

    @property
    def cache_write_tokens(self) -> int:
        return self["cache_write_5m_tokens"] + self["cache_write_1h_tokens"]

    def latency_percentile(self, fraction: float) -> int | None:
        return histogram.percentile(self.values[_LATENCY], fraction)


Group = tuple[Any, ...]  # one value per group-by dimension (ids for team and key)


@dataclass(slots=True)
class SpendReport:
    """The answer to a :class:`SpendQuery`; groups are sorted by cost, largest first."""

    query: SpendQuery
    source: str  # "rollups", "raw" or "rollups+raw": where the sums were read
    totals: Sums
    groups: list[tuple[Group, Sums]]
    series: list[tuple[int, Group, Sums]]  # (bucket key, group, sums), by bucket then rank
    buckets: list[int]  # every bucket of the range, with or without data
    labels: dict[str, dict[Any, str | None]]  # display names of team and key ids

    def bucket_start(self, key: int) -> datetime:
        assert self.query.granularity is not None
        return bucket_start(key, self.query.granularity, zone(self.query.timezone))

    def label(self, dimension: str, value: Any) -> Any:
        """What to show for a group value: names for teams and keys, None when missing."""
        if value == OTHER:
            return OTHER
        if dimension in self.labels:
            return self.labels[dimension].get(value)
        return value or None


async def spend_report(connection: AsyncConnection, query: SpendQuery) -> SpendReport:
    """Totals, groups and series for ``query``; every sum is exact.

    A range with more than ``MAX_BUCKETS`` buckets at the granularity asked for is shown at
    the finest coarser one that fits (none at all past 10000 months: totals and groups
    only); the report's ``query.granularity`` says which was used.
    """
    query, buckets = _fitting_series(query)
    sums, source = await aggregate(
        connection,
        since=query.since,
        until=query.until,
        timezone=query.timezone,
        granularity=query.granularity,
        dimensions=query.group_by,
        filters=query.filters,
    )
    totals = Sums()
    by_group: dict[Group, Sums] = {}
    for (_, *group), values in sums.items():
        totals.add(values)
        by_group.setdefault(tuple(group), Sums()).add(values)
    provider_costs = await _provider_costs(connection, query)
    for group, values in provider_costs.items():
        totals.add_provider_cost(values)
        by_group.setdefault(group, Sums()).add_provider_cost(values)
    labels = await _labels(connection, query.group_by)
    ranked = sorted(by_group.items(), key=lambda item: _rank(item, query.group_by, labels))
    kept = {group for group, _ in ranked[: query.top]} if query.top else set(by_group)
    other: Group = tuple(OTHER for _ in query.group_by)
    groups = [(group, values) for group, values in ranked if group in kept]
    if len(kept) < len(by_group):
        folded = Sums()
        for ranked_group, ranked_sums in ranked:
            if ranked_group not in kept:
                folded.add(ranked_sums.values)
                folded.add_provider_cost(ranked_sums.provider_costed)
        groups.append((other, folded))
    order = {group: index for index, (group, _) in enumerate(groups)}
    series_sums: dict[tuple[int, Group], Sums] = {}
    if query.granularity is not None:
        for (bucket, *group), values in sums.items():
            key = tuple(group) if tuple(group) in kept else other
            series_sums.setdefault((bucket, key), Sums()).add(values)
    series = sorted(
        ((bucket, group, values) for (bucket, group), values in series_sums.items()),
        key=lambda item: (item[0], order[item[1]]),
    )
    return SpendReport(query, source, totals, groups, series, buckets, labels)


async def _provider_costs(connection: AsyncConnection, query: SpendQuery) -> dict[Group, list[int]]:
    """Per group: entries with a provider-reported cost, its sum and Ledger's cost of them.

    Raw entries over the range (rollups do not keep the provider's cost)."""
    raw = _raw_query(
        connection.dialect.name, query.since, query.until, [], zone(query.timezone),
        query.until, None, query.group_by, query.filters,
    )  # fmt: skip
    raw = raw.where(E.provider_cost_nanos.is_not(None)).add_columns(
        func.count().label("pc_entries"),
        func.sum(E.provider_cost_nanos).label("pc_nanos"),
        func.sum(E.cost_nanos).label("pc_cost"),
    )
    found: dict[Group, list[int]] = {}
    for row in await connection.execute(raw):
        group = _group_key(row, query.group_by)[1:]
        mapping = row._mapping
        values = [int(mapping[name] or 0) for name in ("pc_entries", "pc_nanos", "pc_cost")]
        found[group] = [a + b for a, b in zip(found.get(group, [0, 0, 0]), values, strict=True)]
    return found


def _rank(
    item: tuple[Group, Sums], dimensions: Sequence[str], labels: dict[str, dict[Any, str | None]]
) -> tuple[Any, ...]:
    group, values = item
    shown = tuple(
        str(labels[d].get(v) if d in labels else v) for d, v in zip(dimensions, group, strict=True)
    )
    return (-values["cost_nanos"], -values["requests"], shown)


async def _labels(
    connection: AsyncConnection, dimensions: Sequence[str]
) -> dict[str, dict[Any, str | None]]:
    labels: dict[str, dict[Any, str | None]] = {}
    if "team" in dimensions:
        teams = (await connection.execute(select(Team.id, Team.name))).all()
        labels["team"] = {0: None} | {row.id: row.name for row in teams}
    if "key" in dimensions:
        keys = (await connection.execute(select(ApiKey.id, ApiKey.prefix, ApiKey.name))).all()
        labels["key"] = {0: None} | {row.id: row.prefix for row in keys}
        labels["key_name"] = {0: None} | {row.id: row.name for row in keys}
    return labels


# -- the one aggregation ----------------------------------------------------------------


async def aggregate(
    connection: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    timezone: str,
    granularity: str | None,
    dimensions: Sequence[str],
    filters: SpendFilters,
) -> tuple[dict[tuple[Any, ...], list[int]], str]:
    """Sums keyed by ``(bucket key or 0, *dimension values)``, and where they were read.

    Team and key values are ids (0 when an entry has none); other values are
    strings ("" when missing). Values are in ``METRICS`` order.
    """
    tz = zone(timezone)
    # Offsets only place rows in buckets. Finding them takes time in proportion to the
    # range, which nothing else bounds without a granularity (a year-1 ``since``).
    changes = offset_changes(tz, since, until) if granularity is not None else []
    raw_only = (
        any(name in RAW_ONLY_DIMENSIONS for name in dimensions)
        or filters.needs_raw
        or (granularity is not None and not whole_hour_offsets(changes))
    )
    first_hour = epoch_hour(since) + (0 if epoch_seconds(since) % HOUR_S == 0 else 1)
    end_hour = epoch_hour(until)
    parts: list[tuple[str, datetime, datetime]] = []
    if raw_only or first_hour >= end_hour:
        parts.append(("raw", since, until))
    else:
        first, end = from_epoch_seconds(first_hour * HOUR_S), from_epoch_seconds(end_hour * HOUR_S)
        if since < first:
            parts.append(("raw", since, first))
        parts.append(("rollups", first, end))
        if end < until:
            parts.append(("raw", end, until))
    merged: dict[tuple[Any, ...], list[int]] = {}
    for kind, start, stop in parts:
        if kind == "rollups":
            level = _level_for(dimensions, filters)
            query = _rollup_query(
                level, start, stop, changes, tz, until, granularity, dimensions, filters
            )
        else:
            query = _raw_query(
                connection.dialect.name, start, stop, changes, tz, until, granularity, dimensions,
                filters,
            )  # fmt: skip
        for row in await connection.execute(query):
            key = _group_key(row, dimensions)
            values = metrics_of(row)
            if key in merged:
                merged[key] = [a + b for a, b in zip(merged[key], values, strict=True)]
            else:
                merged[key] = values
    kinds = {kind for kind, _, _ in parts}
    source = "rollups+raw" if len(kinds) == 2 else kinds.pop()
    return merged, source


def _group_key(row: Any, dimensions: Sequence[str]) -> tuple[Any, ...]:
    mapping = row._mapping
    values: list[Any] = [int(mapping["bucket"]) if "bucket" in mapping else 0]
    for name in dimensions:
        value = mapping[f"d_{name}"]
        values.append(int(value) if name in ("team", "key") else str(value))
    return tuple(values)


def _level_for(dimensions: Sequence[str], filters: SpendFilters) -> RollupLevel:
    """The smallest rollup table that has every dimension grouped or filtered on."""
    needed = {_ROLLUP_COLUMN[name] for name in dimensions}
    for name, values in (
        ("team_id", filters.team_ids),
        ("key_id", filters.key_ids),
        ("model", filters.models),
        ("provider", filters.providers),
        ("status", filters.statuses),
    ):
        if values:
            needed.add(name)
    return next(level for level in LEVELS if level.covers(needed))


def _rollup_query(
    level: RollupLevel,
    start: datetime,
    stop: datetime,
    changes: list[OffsetChange],
    tz: ZoneInfo,
    until: datetime,
    granularity: str | None,
    dimensions: Sequence[str],
    filters: SpendFilters,
) -> Select[Any]:
    table = level.table
    columns = [table.c[_ROLLUP_COLUMN[name]].label(f"d_{name}") for name in dimensions]
    if granularity:
        seconds = table.c.epoch_hour * HOUR_S
        columns.insert(0, bucket_key_expr(seconds, changes, granularity, tz, until).label("bucket"))
    query = select(*columns, *rollups.rollup_metric_columns(table)).where(
        table.c.epoch_hour >= epoch_hour(start), table.c.epoch_hour < epoch_hour(stop)
    )
    for values, name in (
        (filters.team_ids, "team_id"),
        (filters.key_ids, "key_id"),
        (filters.models, "model"),
        (filters.providers, "provider"),
        (filters.statuses, "status"),
    ):
        if values:
            query = query.where(table.c[name].in_(values))
    return query.group_by(*columns)


def _raw_query(
    dialect: str,
    start: datetime,
    stop: datetime,
    changes: list[OffsetChange],
    tz: ZoneInfo,
    until: datetime,
    granularity: str | None,
    dimensions: Sequence[str],
    filters: SpendFilters,
) -> Select[Any]:
    tag = _tag_values(dialect) if "tag" in dimensions else None
    columns = []
    for name in dimensions:
        if name == "tag":
            assert tag is not None
            expression: ColumnElement[Any] = func.coalesce(tag.c.value, "")
        elif name == "user":
            expression = func.coalesce(E.end_user, "")
        elif name == "session":  # the end user's session (Claude Code's), "" when none
            expression = func.coalesce(E.end_user_session, "")
        elif name == "priced_model":
            expression = func.coalesce(_PRICED.c.model, E.requested_model, "")
        elif name == "served_model":
            expression = func.coalesce(E.served_model, "")
        else:
            expression = rollups.raw_dimension(_ROLLUP_COLUMN[name])
        columns.append(expression.label(f"d_{name}"))
    if granularity:
        seconds = rollups.raw_epoch_seconds(dialect)
        columns.insert(0, bucket_key_expr(seconds, changes, granularity, tz, until).label("bucket"))
    query = select(*columns, *rollups.raw_metric_columns()).where(
        E.started_at >= start, E.started_at < stop
    )
    source: Any = E.__table__
    if tag is not None:
        source = source.outerjoin(tag, true())
    if "priced_model" in dimensions:
        source = source.outerjoin(_PRICED, _PRICED.c.id == E.price_id)
    if source is not E.__table__:
        query = query.select_from(source)
    for values, column in (
        (filters.team_ids, E.team_id),
        (filters.key_ids, E.key_id),
        (filters.users, E.end_user),
        (filters.models, E.requested_model),
        (filters.providers, E.provider),
        (filters.statuses, E.status),
    ):
        if values:
            query = query.where(column.in_(values))
    if filters.tags:
        if tag is not None:
            query = query.where(tag.c.value.in_(filters.tags))
        else:
            tags = _tag_values(dialect)
            query = query.where(
                select(literal(1)).select_from(tags).where(tags.c.value.in_(filters.tags)).exists()
            )
    return query.group_by(*columns)


def _tag_values(dialect: str) -> Any:
    """The tags of the current entry as a table-valued function with a ``value`` column."""
    if dialect == "postgresql":
        from sqlalchemy import JSON, cast

        return func.json_array_elements_text(cast(E.tags, JSON)).table_valued("value").lateral()
    return func.json_each(E.tags).table_valued("value")


# -- enumerating buckets in Python (mirrors bucket_key_expr) -----------------------------


def bucket_key(at: datetime, granularity: str, tz: ZoneInfo) -> int:
    """The bucket key of one instant; the Python twin of ``bucket_key_expr``."""
    local = at.astimezone(tz)
    offset = local.utcoffset()
    assert offset is not None
    seconds = epoch_seconds(at) + int(offset.total_seconds())
    if granularity == "hour":
        return (seconds // HOUR_S) * HOUR_S - int(offset.total_seconds())
    if granularity == "day":
        return seconds // DAY_S
    if granularity == "week":
        return (seconds + 3 * DAY_S) // (7 * DAY_S)
    return local.year * 12 + local.month - 1


def _fitting_series(query: SpendQuery) -> tuple[SpendQuery, list[int]]:
    """The query at the finest granularity, from the one asked for, whose series fits."""
    if query.granularity is None:
        return query, []
    tz = zone(query.timezone)
    for granularity in GRANULARITIES[GRANULARITIES.index(query.granularity) :]:
        keys = bucket_keys(query.since, query.until, granularity, tz)
        if keys is not None:
            return replace(query, granularity=granularity), keys
    return replace(query, granularity=None), []


def bucket_keys(
    since: datetime, until: datetime, granularity: str, tz: ZoneInfo
) -> list[int] | None:
    """Every bucket that ``[since, until)`` touches, in order; None past ``MAX_BUCKETS``."""
    keys: list[int] = []
    at = since
    while at < until:
        key = bucket_key(at, granularity, tz)
        keys.append(key)
        if len(keys) > MAX_BUCKETS:
            return None
        at = _next_bucket_start(key, granularity, tz)
    return keys


def _next_bucket_start(key: int, granularity: str, tz: ZoneInfo) -> datetime:
    if granularity == "hour":
        return from_epoch_seconds(key + HOUR_S)
    start = bucket_start(key, granularity, tz).date()
    if granularity == "day":
        return local_midnight(start + timedelta(days=1), tz)
    if granularity == "week":
        return local_midnight(start + timedelta(days=7), tz)
    following = start.replace(day=28) + timedelta(days=4)
    return local_midnight(following.replace(day=1), tz)
