"""Spend and budget reports over REST: groupings, calendar buckets, CSV, top-N, isolation,
and exact reconciliation with the raw ledger on randomised data (both databases)."""

from __future__ import annotations

import csv
import io
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

from ledger.db.ledger import LedgerEntry
from ledger.db.tables import spend_rollups_hourly as R
from ledger.money import format_usd
from ledger.reports import histogram
from ledger.reports.rollups import ERROR_STATUSES, verify_rollups
from ledger.reports.spend import SpendFilters, SpendQuery, spend_report
from ledger.reports.timebuckets import local_midnight
from tests.integration.reports_support import (
    entry,
    report_server,
    run_with_engine,
    team_with_key,
    write_entries,
)
from tests.live import LiveServer

UTC_DAY = timedelta(days=1)


@pytest.fixture
def server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with report_server(database_url, monkeypatch) as live:
        yield live


def _spend(server: LiveServer, key: str | None = None, **params: Any) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    client = server.admin
    response = client.get("/api/reports/spend", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# -- exact reconciliation on random data -------------------------------------------------

DIMENSION_OF_ENTRY = {
    "team": lambda e: [e.team_id or 0],
    "key": lambda e: [e.key_id or 0],
    "user": lambda e: [e.end_user or ""],
    "model": lambda e: [e.requested_model or ""],
    "provider": lambda e: [e.provider or ""],
    "status": lambda e: [e.status],
    "tag": lambda e: list(e.tags) or [""],
}


def _random_entries(
    rnd: random.Random, since: datetime, teams: list[tuple[int, int]]
) -> list[LedgerEntry]:
    entries = []
    for _ in range(700):
        team_id, key_id = rnd.choice([*teams, (None, None)])
        kind = "adjustment" if rnd.random() < 0.05 else "request"
        # Mostly ordinary costs, a few huge ones (sums beyond 2**53) and negative corrections.
        cost = rnd.choice(
            [rnd.randrange(0, 5 * 10**9), rnd.randrange(0, 10**9), rnd.randrange(10**15, 10**16)]
        )
        if kind == "adjustment":
            cost = -rnd.randrange(0, 10**9)
        # Spread over 40 days with the odd microsecond, a few just outside the range.
        started = since + timedelta(
            seconds=rnd.randrange(-3 * 3600, 40 * 86400), microseconds=rnd.randrange(10**6)
        )
        entries.append(
            entry(
                started,
                team_id=team_id,
                key_id=key_id,
                model=rnd.choice(["gpt-4.1-mini", "claude-sonnet-4-5", "o4-mini", None]),
                provider=rnd.choice(["openai", "anthropic", None]),
                status=rnd.choice(["ok", "ok", "ok", "blocked", *ERROR_STATUSES]),
                cost_nanos=cost,
                input_tokens=rnd.randrange(0, 10**6),
                cache_read_tokens=rnd.randrange(0, 10**5),
                cache_write_5m_tokens=rnd.randrange(0, 10**4),
                cache_write_1h_tokens=rnd.randrange(0, 10**3),
                output_tokens=rnd.randrange(0, 10**5),
                reasoning_tokens=rnd.randrange(0, 10**4),
                latency_ms=rnd.choice([0, 1, 2, rnd.randrange(3, 600_000), 2_000_000]),
                user=rnd.choice([None, "alice@example.com", "bob@example.com"]),
                tags=rnd.sample(["batch", "eval", "prod"], k=rnd.randrange(0, 3)),
                kind=kind,
            )
        )
    return entries


def _expected(
    entries: list[LedgerEntry],
    since: datetime,
    until: datetime,
    dimensions: tuple[str, ...],
    granularity: str | None,
    tz: ZoneInfo,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The sums computed in Python, bucketed with the standard library's calendar."""

    def zero() -> dict[str, Any]:
        sums: dict[str, Any] = defaultdict(int)
        sums["latency"] = histogram.empty()
        return sums

    expected: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(zero)
    for e in entries:
        if not since <= e.started_at < until:
            continue
        bucket = _python_bucket(e.started_at, granularity, tz).isoformat() if granularity else None
        keys: list[tuple[Any, ...]] = [(bucket,)]
        for name in dimensions:
            keys = [(*k, value) for k in keys for value in DIMENSION_OF_ENTRY[name](e)]
        for key in keys:
            sums = expected[key]
            sums["cost_nanos"] += e.cost_nanos
            sums["input_tokens"] += e.input_tokens
            sums["cache_read_tokens"] += e.cache_read_tokens
            sums["cache_write_tokens"] += e.cache_write_5m_tokens + e.cache_write_1h_tokens
            sums["output_tokens"] += e.output_tokens
            sums["reasoning_tokens"] += e.reasoning_tokens
            if e.kind == "request":
                sums["requests"] += 1
                sums["errors"] += e.status in ERROR_STATUSES
                sums["blocked"] += e.status == "blocked"
                sums["latency"][histogram.bucket_of(e.latency_ms)] += 1
    return expected


def _python_bucket(at: datetime, granularity: str, tz: ZoneInfo) -> datetime:
    local = at.astimezone(tz)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    if granularity == "month":
        day = day.replace(day=1)
    return local_midnight(day, tz)


def _actual(report: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    items = (
        [(report.bucket_start(b).isoformat(), g, s) for b, g, s in report.series]
        if report.query.granularity
        else [(None, g, s) for g, s in report.groups]
    )
    for bucket, group, sums in items:
        rows[(bucket, *group)] = {
            "cost_nanos": sums["cost_nanos"],
            "input_tokens": sums["input_tokens"],
            "cache_read_tokens": sums["cache_read_tokens"],
            "cache_write_tokens": sums.cache_write_tokens,
            "output_tokens": sums["output_tokens"],
            "reasoning_tokens": sums["reasoning_tokens"],
            "requests": sums["requests"],
            "errors": sums["errors"],
            "blocked": sums["blocked"],
            "p50": sums.latency_percentile(0.5),
            "p95": sums.latency_percentile(0.95),
        }
    return rows


def _comparable(
    expected: dict[tuple[Any, ...], dict[str, Any]],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = {}
    for key, sums in expected.items():
        row = {name: sums[name] for name in (
            "cost_nanos", "input_tokens", "cache_read_tokens", "cache_write_tokens",
            "output_tokens", "reasoning_tokens", "requests", "errors", "blocked")}  # fmt: skip
        row["p50"] = histogram.percentile(sums["latency"], 0.5)
        row["p95"] = histogram.percentile(sums["latency"], 0.95)
        rows[key] = row
    return rows


def test_every_grouping_and_calendar_reconciles_to_the_nano_on_random_entries(
    server: LiveServer, database_url: str
) -> None:
    seed = int(os.environ.get("LEDGER_TEST_SEED", random.randrange(2**32)))
    rnd = random.Random(seed)
    teams = [team_with_key(server, name)[:2] for name in ("alpha", "beta", "gamma")]
    # A range that starts and ends inside an hour: rollups plus raw edges.
    since = datetime(2026, 10, 3, 7, 17, 23, tzinfo=UTC)
    until = since + timedelta(days=38, minutes=53)
    entries = _random_entries(rnd, since, teams)
    write_entries(database_url, entries)

    cases = [
        ((), None, "UTC"),
        (("team",), "day", "UTC"),
        (("key",), "day", "America/New_York"),  # across the end of daylight saving time
        (("user",), "week", "Europe/Berlin"),
        (("model",), "month", "Europe/Berlin"),
        (("provider",), "hour", "UTC"),
        (("status",), "day", "Asia/Kolkata"),  # +05:30: raw entries
        (("tag",), "day", "UTC"),
        (("team", "model"), "week", "America/New_York"),
    ]

    async def check(engine: Any) -> list[str]:
        sources = []
        async with engine.connect() as connection:
            for dimensions, granularity, tz in cases:
                query = SpendQuery(
                    since=since, until=until, timezone=tz, granularity=granularity,
                    group_by=dimensions,
                )  # fmt: skip
                report = await spend_report(connection, query)
                expected = _comparable(
                    _expected(entries, since, until, dimensions, granularity, ZoneInfo(tz))
                )
                assert _actual(report) == expected, f"seed={seed} {dimensions} {granularity} {tz}"
                if "tag" not in dimensions:
                    in_range = [e for e in entries if since <= e.started_at < until]
                    assert report.totals["cost_nanos"] == sum(e.cost_nanos for e in in_range)
                sources.append(report.source)
        check = await verify_rollups(engine, repair=False)
        assert check.ok, check.differences
        return sources

    sources = run_with_engine(database_url, check)
    assert "rollups+raw" in sources and "raw" in sources

    # The same figures over HTTP, as exact decimal strings.
    body = _spend(
        server, since=since.isoformat(), until=until.isoformat(), group_by="team",
        granularity="none",
    )  # fmt: skip
    by_team = _expected(entries, since, until, ("team",), None, ZoneInfo("UTC"))
    names = {
        team_id: name for (team_id, _), name in zip(teams, ("alpha", "beta", "gamma"), strict=True)
    }
    got = {row["group"]["team"]: row["cost_usd"] for row in body["groups"]}
    want = {names.get(team_id): format_usd(s["cost_nanos"]) for (_, team_id), s in by_team.items()}
    assert got == want, f"seed={seed}"


# -- calendar buckets --------------------------------------------------------------------


def test_days_follow_local_midnight_across_the_end_of_daylight_saving_time(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    at = [
        datetime(2026, 11, 1, 3, 30, tzinfo=UTC),  # Oct 31, 23:30 EDT
        datetime(2026, 11, 1, 4, 30, tzinfo=UTC),  # Nov 1, 00:30 EDT
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # Nov 1, 01:30 EDT (first 1:30)
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # Nov 1, 01:30 EST (second 1:30)
        datetime(2026, 11, 2, 4, 30, tzinfo=UTC),  # Nov 1, 23:30 EST: 25-hour day
        datetime(2026, 11, 2, 5, 30, tzinfo=UTC),  # Nov 2, 00:30 EST
    ]
    write_entries(
        database_url,
        [entry(t, team_id=team_id, key_id=key_id, cost_nanos=10**i) for i, t in enumerate(at)],
    )
    window = {"since": "2026-10-31T00:00:00-04:00", "until": "2026-11-03T00:00:00-05:00"}

    days = _spend(server, timezone="America/New_York", granularity="day", **window)
    assert days["source"] == "rollups"
    assert days["buckets"] == [
        "2026-10-31T00:00:00-04:00",
        "2026-11-01T00:00:00-04:00",
        "2026-11-02T00:00:00-05:00",
    ]
    assert {row["bucket"]: row["cost_usd"] for row in days["series"]} == {
        "2026-10-31T00:00:00-04:00": format_usd(1),
        "2026-11-01T00:00:00-04:00": format_usd(10 + 100 + 1000 + 10000),
        "2026-11-02T00:00:00-05:00": format_usd(100000),
    }

    hours = _spend(server, timezone="America/New_York", granularity="hour", **window)
    repeated = [row["bucket"] for row in hours["series"] if "T01:00" in row["bucket"]]
    assert repeated == ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
    assert len(hours["buckets"]) == 24 + 25 + 24

    # A half-hour zone cannot be built from UTC hours: the same answer from raw entries.
    kolkata = _spend(
        server, timezone="Asia/Kolkata", granularity="day",
        since="2026-11-01T00:00:00+05:30", until="2026-11-03T00:00:00+05:30",
    )  # fmt: skip
    assert kolkata["source"] == "raw"
    assert {row["bucket"]: row["cost_usd"] for row in kolkata["series"]} == {
        "2026-11-01T00:00:00+05:30": format_usd(1 + 10 + 100 + 1000),  # 03:30Z is 09:00 IST
        "2026-11-02T00:00:00+05:30": format_usd(10000 + 100000),
    }

    weeks = _spend(server, timezone="America/New_York", granularity="week", **window)
    assert [row["bucket"] for row in weeks["series"]] == [
        "2026-10-26T00:00:00-04:00",  # Monday
        "2026-11-02T00:00:00-05:00",
    ]
    months = _spend(server, timezone="America/New_York", granularity="month", **window)
    assert [(row["bucket"], row["cost_usd"]) for row in months["series"]] == [
        ("2026-10-01T00:00:00-04:00", format_usd(1)),
        ("2026-11-01T00:00:00-04:00", format_usd(111110)),
    ]


def test_spend_has_every_figure_and_csv_has_one_row_per_bucket_and_group(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    day = datetime(2026, 10, 5, 10, tzinfo=UTC)
    write_entries(
        database_url,
        [
            entry(day, team_id=team_id, key_id=key_id, model="gpt-4.1", cost_nanos=1_500_000,
                  input_tokens=7, cache_read_tokens=3, cache_write_5m_tokens=2,
                  cache_write_1h_tokens=1, output_tokens=5, reasoning_tokens=4, latency_ms=100),
            entry(day, team_id=team_id, key_id=key_id, model="gpt-4.1", status="timeout",
                  cost_nanos=0, latency_ms=60_000),
            entry(day + UTC_DAY, team_id=team_id, key_id=key_id, model="o4-mini",
                  status="blocked", cost_nanos=0, latency_ms=3),
        ],
    )  # fmt: skip
    window = {"since": "2026-10-05T00:00:00Z", "until": "2026-10-07T00:00:00Z"}
    body = _spend(server, group_by="model", **window)
    assert body["totals"] == {
        "requests": 3, "errors": 1, "blocked": 1, "input_tokens": 207, "cache_read_tokens": 3,
        "cache_write_tokens": 3, "output_tokens": 25, "reasoning_tokens": 4,
        "cost_usd": "0.001500000", "latency_p50_ms": histogram.representative(histogram.bucket_of(100)),
        "latency_p95_ms": histogram.representative(histogram.bucket_of(60_000)),
        "provider_cost_usd": None, "provider_cost_difference_usd": None,  # none reported one
    }  # fmt: skip

    response = server.admin.get(
        "/api/reports/spend", params={"group_by": "team,model", "format": "csv", **window}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["bucket"], r["team"], r["model"], r["cost_usd"], r["requests"]) for r in rows] == [
        ("2026-10-05T00:00:00+00:00", "research", "gpt-4.1", "0.001500000", "2"),
        ("2026-10-06T00:00:00+00:00", "research", "o4-mini", "0.000000000", "1"),
    ]


def test_top_n_keeps_the_biggest_groups_and_folds_the_rest_into_other(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    at = datetime(2026, 10, 5, 10, tzinfo=UTC)
    costs = {"m1": 500, "m2": 400, "m3": 300, "m4": 200, "m5": 100}
    write_entries(
        database_url,
        [
            entry(at, team_id=team_id, key_id=key_id, model=m, cost_nanos=c)
            for m, c in costs.items()
        ],
    )
    body = _spend(
        server, group_by="model", top=2, granularity="day",
        since="2026-10-05T00:00:00Z", until="2026-10-06T00:00:00Z",
    )  # fmt: skip
    assert [(g["group"]["model"], g["other"], g["cost_usd"]) for g in body["groups"]] == [
        ("m1", False, format_usd(500)),
        ("m2", False, format_usd(400)),
        ("(other)", True, format_usd(600)),
    ]
    assert [s["group"]["model"] for s in body["series"]] == ["m1", "m2", "(other)"]
    assert body["totals"]["cost_usd"] == format_usd(1500)


def test_filters_narrow_the_entries_on_every_dimension(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    other_team, other_key, _ = team_with_key(server, "growth")
    at = datetime(2026, 10, 5, 10, 30, tzinfo=UTC)
    write_entries(
        database_url,
        [
            entry(at, team_id=team_id, key_id=key_id, cost_nanos=1, tags=["eval"], user="ann"),
            entry(at, team_id=team_id, key_id=key_id, cost_nanos=2, model="o4-mini",
                  provider="openai", status="timeout"),
            entry(at, team_id=other_team, key_id=other_key, cost_nanos=4, provider="anthropic",
                  model="claude-haiku-4-5", tags=["eval", "prod"]),
        ],
    )  # fmt: skip
    window = {"since": "2026-10-05T00:00:00Z", "until": "2026-10-06T00:00:00Z"}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"team": "research"}, 3),
        ({"key_id": other_key}, 4),
        ({"user": "ann"}, 1),
        ({"model": ["o4-mini", "claude-haiku-4-5"]}, 6),
        ({"provider": "anthropic"}, 4),
        ({"status": "timeout"}, 2),
        ({"tag": "eval"}, 5),
        ({"tag": "eval", "group_by": "tag"}, 5),
    ]
    for params, cost in cases:
        assert _spend(server, **window, **params)["totals"]["cost_usd"] == format_usd(cost), params


def test_a_team_key_sees_only_its_team_and_other_teams_are_refused(
    server: LiveServer, database_url: str
) -> None:
    research_id, research_key_id, research_key = team_with_key(server, "research")
    growth_id, growth_key_id, growth_key = team_with_key(server, "growth")
    at = datetime(2026, 10, 5, 10, tzinfo=UTC)
    write_entries(
        database_url,
        [
            entry(at, team_id=research_id, key_id=research_key_id, cost_nanos=7),
            entry(at, team_id=growth_id, key_id=growth_key_id, cost_nanos=1000),
        ],
    )
    window = {"since": "2026-10-01T00:00:00Z", "until": "2026-10-10T00:00:00Z"}

    own = _spend(server, research_key, group_by="team", **window)
    assert [g["group"]["team"] for g in own["groups"]] == ["research"]
    assert own["totals"]["cost_usd"] == format_usd(7)
    everything = _spend(server, group_by="team", **window)
    assert everything["totals"]["cost_usd"] == format_usd(1007)

    def status(path: str, key: str, **params: Any) -> int:
        return server.admin.get(
            path, params=params, headers={"authorization": f"Bearer {key}"}
        ).status_code

    assert status("/api/reports/spend", research_key, team="growth", **window) == 403
    assert status("/api/reports/spend", research_key, key_id=growth_key_id, **window) == 403
    assert status("/api/reports/spend", research_key, team="research", **window) == 200
    assert status("/api/reports/spend", "sk-ledger-not-a-key", **window) == 401
    closed = server.admin.post(
        "/admin/months/2026-10/close", headers={"authorization": f"Bearer {research_key}"}
    )
    assert closed.status_code == 403

    monthly = server.admin.get(
        "/api/reports/monthly/2026-10", headers={"authorization": f"Bearer {growth_key}"}
    )
    assert monthly.status_code == 200
    assert [t["team"] for t in monthly.json()["teams"]] == ["growth"]
    assert monthly.json()["total"]["cost_usd"] == format_usd(1000)


def test_bad_parameters_are_refused_with_a_clear_message(server: LiveServer) -> None:
    for params, needle in [
        ({"granularity": "fortnight"}, "granularity"),
        ({"group_by": "colour"}, "group by"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"since": "2026-10-05T00:00:00", "until": "2026-10-06T00:00:00Z"}, "UTC offset"),
        ({"format": "pdf"}, "format"),
        ({"team": "nobody"}, "nobody"),
    ]:
        response = server.admin.get("/api/reports/spend", params=params)
        assert response.status_code in (400, 404), (params, response.text)
        assert needle in response.json()["error"]["message"], (params, response.text)
    assert server.admin.get("/api/reports/monthly/2026-13").status_code == 400


# -- rollups -------------------------------------------------------------------------------


def test_verify_rollups_finds_a_tampered_row_and_repairs_it(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    at = datetime(2026, 10, 5, 10, 15, tzinfo=UTC)
    write_entries(
        database_url,
        [entry(at + timedelta(hours=h), team_id=team_id, key_id=key_id, cost_nanos=100 + h)
         for h in range(5)],
    )  # fmt: skip

    async def tamper_and_verify(engine: Any) -> tuple[Any, ...]:
        async with engine.begin() as connection:
            await connection.execute(text(
                "UPDATE spend_rollups_hourly SET cost_nanos = cost_nanos + 1, latency_05 = 9 "
                "WHERE epoch_hour = (SELECT MIN(epoch_hour) FROM spend_rollups_hourly)"
            ))  # fmt: skip
            await connection.execute(text(
                "UPDATE spend_rollups_team_hourly SET requests = requests + 3 "
                "WHERE epoch_hour = (SELECT MAX(epoch_hour) FROM spend_rollups_team_hourly)"
            ))  # fmt: skip
            # An extra row for an hour with no entries at all.
            latest = (
                (await connection.execute(select(R).order_by(R.c.epoch_hour.desc()).limit(1)))
                .one()
                ._asdict()
            )
            await connection.execute(
                R.insert().values(latest | {"epoch_hour": latest["epoch_hour"] + 1000})
            )
            await connection.execute(text(
                "DELETE FROM spend_rollups_hourly WHERE epoch_hour = "
                "(SELECT MIN(epoch_hour) + 2 FROM spend_rollups_hourly)"
            ))  # fmt: skip
        found = await verify_rollups(engine, repair=False)
        repaired = await verify_rollups(engine)
        again = await verify_rollups(engine, repair=False)
        async with engine.connect() as connection:
            report = await spend_report(
                connection,
                SpendQuery(since=at - UTC_DAY, until=at + UTC_DAY, granularity=None,
                           filters=SpendFilters(team_ids=(team_id,))),
            )  # fmt: skip
        return found, repaired, again, report

    found, repaired, again, report = run_with_engine(database_url, tamper_and_verify)
    assert (found.mismatched, found.missing, found.extra, found.repaired) == (2, 1, 1, False)
    assert repaired.repaired and not repaired.ok
    assert again.ok
    assert report.totals["cost_nanos"] == sum(100 + h for h in range(5))


# -- budgets -------------------------------------------------------------------------------


def test_budget_report_shows_spent_reserved_remaining_projection_and_alerts(
    server: LiveServer, database_url: str
) -> None:
    research_id, _, research_key = team_with_key(server, "research")
    growth_id, _, _ = team_with_key(server, "growth")
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)

    async def seed(engine: Any) -> None:
        from sqlalchemy import insert

        from ledger.db.tables import Alert, Budget, BudgetPeriod

        async with engine.begin() as connection:
            for budget_id, team_id, limit, spent, reserved in (
                (1, research_id, 10**10, 4 * 10**9, 5 * 10**8),
                (2, growth_id, 10**9, 2 * 10**9, 0),
            ):
                await connection.execute(insert(Budget).values(
                    id=budget_id, name=f"budget {budget_id}", scope="team", team_id=team_id,
                    period="monthly", timezone="UTC", limit_nanos=limit, mode="hard",
                    thresholds="50,80,100", clamp_max_tokens=False, fail_open=False,
                    created_at=now, updated_at=now,
                ))  # fmt: skip
                await connection.execute(insert(BudgetPeriod).values(
                    budget_id=budget_id, period_start=start, period_end=None, spent_nanos=spent,
                    reserved_nanos=reserved, blocked=False, updated_at=now,
                ))  # fmt: skip
            await connection.execute(insert(Alert).values(
                budget_id=2, period_start=start, kind="threshold", threshold=100,
                message="budget 2 is over its limit", spent_nanos=2 * 10**9, limit_nanos=10**9,
                created_at=now,
            ))  # fmt: skip

    run_with_engine(database_url, seed)
    body = server.admin.get("/api/reports/budgets").json()
    by_name = {b["name"]: b for b in body["data"]}
    research = by_name["budget 1"]
    assert (research["limit_usd"], research["spent_usd"], research["reserved_usd"]) == (
        "10.000000000", "4.000000000", "0.500000000",
    )  # fmt: skip
    assert research["remaining_usd"] == "5.500000000"
    assert research["percent_used"] == "40.00"
    assert research["alerts_sent"] == 0
    as_of = datetime.fromisoformat(body["as_of"])
    end = datetime.fromisoformat(research["period_end"])
    elapsed_us = (as_of - start) // timedelta(microseconds=1)
    length_us = (end - start) // timedelta(microseconds=1)
    assert research["projected_usd"] == format_usd(4 * 10**9 * length_us // elapsed_us)
    growth = by_name["budget 2"]
    assert (growth["percent_used"], growth["remaining_usd"], growth["alerts_sent"]) == (
        "200.00", "-1.000000000", 1,
    )  # fmt: skip
    assert [a["message"] for a in body["recent_alerts"]] == ["budget 2 is over its limit"]

    mine = server.admin.get(
        "/api/reports/budgets", headers={"authorization": f"Bearer {research_key}"}
    ).json()
    assert [b["name"] for b in mine["data"]] == ["budget 1"]
    assert mine["recent_alerts"] == []
    csv_rows = list(csv.DictReader(io.StringIO(
        server.admin.get("/api/reports/budgets", params={"format": "csv"}).text
    )))  # fmt: skip
    assert {r["name"]: r["spent_usd"] for r in csv_rows} == {
        "budget 1": "4.000000000",
        "budget 2": "2.000000000",
    }
