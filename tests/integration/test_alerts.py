"""Budget alerts reach their channels once each, survive a channel that is down, and are listed.

Alerts go to real receivers on loopback (``tests/webhook_receiver.py``). The scheduler is
off; the tests run ``check_budgets`` and ``deliver_pending`` themselves, moving ``now``
forward to get past the retry backoff instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.alerts import deliver_pending
from ledger.budgets.checks import BudgetCheck, check_budgets
from ledger.config import AlertChannelConfig
from ledger.db.engine import create_engine
from ledger.db.tables import Alert, AlertDelivery
from tests.live import LiveServer
from tests.webhook_receiver import WebhookReceiver

T = TypeVar("T")

MODEL = "gpt-4.1-mini"
SECRET = "whsec-test-7f3a"


# -- helpers --------------------------------------------------------------------------------


def on_db(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def check(database_url: str, channels: Sequence[AlertChannelConfig]) -> BudgetCheck:
    [result] = on_db(database_url, lambda engine: check_budgets(engine, channels))
    return result


def deliver(
    database_url: str,
    channels: Sequence[AlertChannelConfig],
    now: datetime | None = None,
    **options: Any,
) -> int:
    return on_db(database_url, lambda engine: deliver_pending(engine, channels, now=now, **options))


def deliveries(database_url: str) -> dict[tuple[int, str], dict[str, Any]]:
    """Every delivery row by (alert threshold, channel)."""

    async def read(engine: AsyncEngine) -> dict[tuple[int, str], dict[str, Any]]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(
                    Alert.threshold,
                    AlertDelivery.channel,
                    AlertDelivery.status,
                    AlertDelivery.attempts,
                    AlertDelivery.last_error,
                ).join(Alert, Alert.id == AlertDelivery.alert_id)
            )
            return {
                (r.threshold, r.channel): {
                    "status": r.status,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                }
                for r in rows
            }

    return on_db(database_url, read)


def spend(gateway: LiveServer, client: openai.OpenAI, requests: int) -> Decimal:
    """Make ``requests`` identical requests; returns the team's total spend so far."""
    for _ in range(requests):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "alert me when it matters"}]
        )
    return sum((Decimal(e["cost_usd"]) for e in gateway.entries()), Decimal(0))


def usd(value: Decimal) -> str:
    return f"{value:.9f}"


def create_budget(gateway: LiveServer, **body: Any) -> dict[str, Any]:
    # Lifetime (period "none") soft budgets: no forecast and no blocking, only thresholds.
    body = {"team": "research", "period": "none", "mode": "soft", **body}
    response = gateway.admin.post("/admin/budgets", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key("research"), max_retries=0
    )


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as receiver:
        yield receiver


def webhook(receiver: WebhookReceiver, name: str = "ops-hook") -> AlertChannelConfig:
    return AlertChannelConfig(name=name, kind="webhook", url=receiver.url + "/hook", secret=SECRET)


# -- tests ----------------------------------------------------------------------------------


def test_each_threshold_alerts_once_however_often_the_check_runs(
    gateway: LiveServer, database_url: str, hook: WebhookReceiver
) -> None:
    client = _client(gateway)
    with WebhookReceiver() as slack_receiver:
        slack = AlertChannelConfig(name="team-slack", kind="slack", url=slack_receiver.url)
        channels = [webhook(hook), slack]
        cost = spend(gateway, client, 1)
        budget = create_budget(gateway, limit_usd=usd(10 * cost), name="research alerts")
        assert check(database_url, channels).alerts == ()  # 10%: below every threshold

        seen: list[int] = []
        for requests, threshold in ((4, 50), (3, 80), (2, 100)):
            spent = spend(gateway, client, requests)
            first = check(database_url, channels)
            assert first.spent == int(spent * 10**9)
            assert first.alerts == (f"threshold {threshold}%",)
            assert deliver(database_url, channels) == 3  # webhook, Slack and the log
            for _ in range(2):
                assert check(database_url, channels).alerts == ()
                assert deliver(database_url, channels) == 0
            seen.append(threshold)

            assert [call.json["threshold_percent"] for call in hook.calls] == seen
            payload = hook.calls[-1].json
            assert payload["budget_id"] == budget["id"]
            assert payload["kind"] == "threshold"
            assert payload["spent_usd"] == usd(spent)
            assert payload["limit_usd"] == usd(10 * cost)
            assert f"reached {threshold}%" in payload["message"]
            assert "'research alerts'" in payload["message"]
            assert len(slack_receiver.calls) == len(seen)
            assert slack_receiver.calls[-1].json == {
                "text": f":warning: Ledger: {payload['message']}"
            }

    # Every webhook call was signed with the channel's secret, over timestamp and body.
    assert all(call.signature_ok for call in hook.calls)
    assert all(call.headers["content-type"] == "application/json" for call in hook.calls)
    assert len({call.json["id"] for call in hook.calls}) == 3
    assert all(call.answered == 200 for call in hook.calls + slack_receiver.calls)


def test_a_receiver_that_fails_at_first_still_gets_every_alert_once(
    gateway: LiveServer, database_url: str
) -> None:
    client = _client(gateway)
    spent = spend(gateway, client, 2)
    create_budget(gateway, limit_usd=usd(spent), thresholds=[50, 100])
    with WebhookReceiver(secret=SECRET, fail_first=3) as hook:
        channels = [webhook(hook)]
        assert check(database_url, channels).alerts == ("threshold 50%", "threshold 100%")
        now = datetime.now(UTC) + timedelta(seconds=1)

        assert deliver(database_url, channels, now) == 2  # to the log; the webhook answered 500
        rows = deliveries(database_url)
        assert rows[(50, "ops-hook")] == {
            "status": "pending",
            "attempts": 1,
            "last_error": "HTTP 500",
        }
        assert rows[(100, "ops-hook")]["attempts"] == 1
        # Not retried before its backoff (2 s after the first failure) is over.
        assert deliver(database_url, channels, now + timedelta(seconds=1)) == 0
        assert len(hook.calls) == 2

        rounds = 0
        while any(r["status"] == "pending" for r in deliveries(database_url).values()):
            now += timedelta(seconds=MAX_BACKOFF_STEP_S)
            deliver(database_url, channels, now)
            rounds += 1
            assert rounds < 10, deliveries(database_url)
        # Once delivered, never sent again.
        assert deliver(database_url, channels, now + timedelta(hours=1)) == 0

        assert [call.answered for call in hook.calls] == [500, 500, 500, 200, 200]
        delivered = [call.json["threshold_percent"] for call in hook.delivered]
        assert sorted(delivered) == [50, 100]
        assert all(call.signature_ok for call in hook.calls)

    rows = deliveries(database_url)
    # The three failures: the 50% alert twice, the 100% alert once, before each got through.
    assert rows[(50, "ops-hook")] == {"status": "delivered", "attempts": 3, "last_error": None}
    assert rows[(100, "ops-hook")] == {"status": "delivered", "attempts": 2, "last_error": None}
    assert rows[(50, "log")]["status"] == rows[(100, "log")]["status"] == "delivered"

    listed = gateway.admin.get("/admin/alerts")
    assert listed.status_code == 200, listed.text
    alerts = listed.json()["data"]
    assert [(a["kind"], a["threshold"]) for a in alerts] == [("threshold", 100), ("threshold", 50)]
    for alert in alerts:
        assert alert["spent_usd"] == alert["limit_usd"] == usd(spent)
        by_channel = {d["channel"]: d for d in alert["deliveries"]}
        assert set(by_channel) == {"ops-hook", "log"}
        assert by_channel["ops-hook"]["status"] == "delivered"
        assert by_channel["ops-hook"]["delivered_at"] is not None
    attempts = {a["threshold"]: a["deliveries"] for a in alerts}
    assert [d["attempts"] for d in attempts[50] if d["channel"] == "ops-hook"] == [3]


# Longer than any backoff these tests reach (2, 4, 8 s after the 1st, 2nd, 3rd failure).
MAX_BACKOFF_STEP_S = 9


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_channel_that_is_down_delays_only_its_own_alerts(
    gateway: LiveServer, database_url: str, hook: WebhookReceiver
) -> None:
    client = _client(gateway)
    spent = spend(gateway, client, 1)
    create_budget(gateway, limit_usd=usd(spent), thresholds=[100])
    # One channel refuses connections; another accepts them and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        refused = AlertChannelConfig("pager", "webhook", f"http://127.0.0.1:{_closed_port()}/")
        hanging = AlertChannelConfig(
            "hanging", "slack", f"http://127.0.0.1:{silent.getsockname()[1]}/"
        )
        channels = [refused, hanging, webhook(hook)]

        started = time.monotonic()
        assert check(database_url, channels).alerts == ("threshold 100%",)
        assert time.monotonic() - started < 2  # the check only queues alerts; it sends nothing
        assert deliver(database_url, channels, timeout_s=0.5) == 2  # the webhook and the log

    assert [call.json["threshold_percent"] for call in hook.calls] == [100]
    rows = deliveries(database_url)
    assert rows[(100, "ops-hook")]["status"] == rows[(100, "log")]["status"] == "delivered"
    for name in ("pager", "hanging"):
        assert rows[(100, name)]["status"] == "pending"
        assert rows[(100, name)]["attempts"] == 1
        assert rows[(100, name)]["last_error"]
    listed = {
        d["channel"]: d for d in gateway.admin.get("/admin/alerts").json()["data"][0]["deliveries"]
    }
    assert listed["pager"]["status"] == "pending"
    assert listed["pager"]["last_error"] == rows[(100, "pager")]["last_error"]

    # The pager comes back (same name, now reachable): the waiting alert is delivered then.
    with WebhookReceiver() as pager:
        back = [AlertChannelConfig("pager", "webhook", pager.url), webhook(hook)]
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert deliver(database_url, back, later) == 1
        assert [call.json["threshold_percent"] for call in pager.calls] == [100]
    assert len(hook.calls) == 1
    rows = deliveries(database_url)
    assert rows[(100, "pager")]["status"] == "delivered"
    # A channel taken out of the configuration keeps its alert, and says why it waits.
    assert rows[(100, "hanging")]["status"] == "pending"
    assert "no longer configured" in rows[(100, "hanging")]["last_error"]


def test_two_deliveries_running_at_once_send_each_alert_once(
    gateway: LiveServer, database_url: str, hook: WebhookReceiver
) -> None:
    # Two scheduler processes whose delivery passes overlap (a slow channel makes a pass
    # last longer than the tick) must not both send the same pending alert.
    spent = spend(gateway, _client(gateway), 1)
    create_budget(gateway, limit_usd=usd(spent))
    channels = [webhook(hook)]
    assert len(check(database_url, channels).alerts) == 3

    async def two_passes(engine: AsyncEngine) -> list[int]:
        other = create_engine(database_url)
        try:
            return list(
                await asyncio.gather(
                    deliver_pending(engine, channels), deliver_pending(other, channels)
                )
            )
        finally:
            await other.dispose()

    delivered = on_db(database_url, two_passes)
    assert sum(delivered) == 6  # three alerts, to the webhook and the log, once each
    assert sorted(call.json["threshold_percent"] for call in hook.calls) == [50, 80, 100]
    assert all(row["attempts"] == 1 for row in deliveries(database_url).values())
