"""Alert delivery: an outbox in the database, drained to webhooks, Slack and the log.

An alert is stored first and delivered after, one delivery row per channel. A channel
that is down only delays its own rows (retried with capped exponential backoff); it
never blocks the checks or the gateway, and nothing is lost while it is down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.config import AlertChannelConfig
from ledger.db.tables import Alert, AlertDelivery
from ledger.money import format_usd

logger = logging.getLogger("ledger.alerts")

SIGNATURE_HEADER = "x-ledger-signature"
TIMESTAMP_HEADER = "x-ledger-timestamp"
MAX_BACKOFF_S = 300
_CLAIM_MARGIN_S = 30  # beyond the send timeout, before a claimed delivery is due again
_LOG_CHANNEL = AlertChannelConfig(name="log", kind="log")


def channels_with_log(channels: Sequence[AlertChannelConfig]) -> list[AlertChannelConfig]:
    """The configured channels, plus the log, which always receives every alert."""
    return [*channels, *([] if any(c.kind == "log" for c in channels) else [_LOG_CHANNEL])]


async def raise_alert(
    connection: AsyncConnection,
    channels: Sequence[AlertChannelConfig],
    *,
    budget_id: int,
    period_start: datetime,
    kind: str,
    threshold: int,
    message: str,
    spent: int,
    limit: int,
) -> bool:
    """Store an alert once per (budget, period, kind, threshold) and queue its deliveries.

    Returns False when the same alert was raised before (by this or another process).
    """
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    now = datetime.now(UTC)
    alert_id = await connection.scalar(
        insert(Alert)
        .values(
            budget_id=budget_id,
            period_start=period_start,
            kind=kind,
            threshold=threshold,
            message=message,
            spent_nanos=spent,
            limit_nanos=limit,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["budget_id", "period_start", "kind", "threshold"])
        .returning(Alert.id)
    )
    if alert_id is None:
        return False
    for channel in channels_with_log(channels):
        await connection.execute(
            insert(AlertDelivery)
            .values(
                alert_id=alert_id,
                channel=channel.name,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["alert_id", "channel"])
        )
    return True


def alert_payload(alert: Any) -> dict[str, Any]:
    return {
        "id": alert["id"],
        "budget_id": alert["budget_id"],
        "kind": alert["kind"],
        # A reconciliation alert's threshold column only keeps it once per provider.
        "threshold_percent": (alert["threshold"] or None)
        if alert["kind"] != "reconciliation"
        else None,
        "period_start": alert["period_start"].isoformat(),
        "message": alert["message"],
        "spent_usd": format_usd(alert["spent_nanos"]),
        "limit_usd": format_usd(alert["limit_nanos"]),
        "created_at": alert["created_at"].isoformat(),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``timestamp.body``; receivers recompute it to trust the alert."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


async def deliver_pending(
    engine: AsyncEngine,
    channels: Sequence[AlertChannelConfig],
    *,
    now: datetime | None = None,
    limit: int = 100,
    timeout_s: float = 5.0,
) -> int:
    """Try every delivery that is due; returns how many were delivered."""
    now = now or datetime.now(UTC)
    by_name = {c.name: c for c in channels_with_log(channels)}
    async with engine.connect() as connection:
        due = (
            await connection.execute(
                select(AlertDelivery.__table__, Alert.__table__)
                .join(Alert, Alert.id == AlertDelivery.alert_id)
                .where(AlertDelivery.status == "pending", AlertDelivery.next_attempt_at <= now)
                .order_by(AlertDelivery.id)
                .limit(limit)
            )
        ).mappings().all()  # fmt: skip
    if not due:
        return 0
    delivered = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for row in due:
            delivery_id = row[AlertDelivery.__table__.c.id]
            attempts = row["attempts"] + 1
            # Claim the row before sending: a pass that overlaps this one (another process,
            # or this one's next tick behind a slow channel) then skips it, so nothing is
            # sent twice. A process that dies mid-send leaves it due again after the claim.
            async with engine.begin() as connection:
                claimed = await connection.execute(
                    update(AlertDelivery)
                    .where(
                        AlertDelivery.id == delivery_id,
                        AlertDelivery.status == "pending",
                        AlertDelivery.attempts == row["attempts"],
                    )
                    .values(
                        attempts=attempts,
                        next_attempt_at=now + timedelta(seconds=timeout_s + _CLAIM_MARGIN_S),
                    )
                )
            if claimed.rowcount != 1:
                continue
            channel = by_name.get(row["channel"])
            error: str | None = None
            if channel is None:
                error = f"channel {row['channel']!r} is no longer configured"
            else:
                error = await _send(http, channel, row)
            async with engine.begin() as connection:
                if error is None:
                    delivered += 1
                    values: dict[str, Any] = {
                        "status": "delivered", "attempts": attempts, "delivered_at": now,
                        "last_error": None,
                    }  # fmt: skip
                else:
                    backoff = min(MAX_BACKOFF_S, 2**attempts)
                    values = {
                        "attempts": attempts,
                        "last_error": error[:1000],
                        "next_attempt_at": now + timedelta(seconds=backoff),
                    }
                await connection.execute(
                    update(AlertDelivery)
                    .where(AlertDelivery.id == delivery_id, AlertDelivery.status == "pending")
                    .values(**values)
                )
    return delivered


async def _send(http: aiohttp.ClientSession, channel: AlertChannelConfig, row: Any) -> str | None:
    alert = {
        "id": row[Alert.__table__.c.id],
        "budget_id": row["budget_id"],
        "kind": row["kind"],
        "threshold": row["threshold"],
        "period_start": row["period_start"],
        "message": row["message"],
        "spent_nanos": row["spent_nanos"],
        "limit_nanos": row["limit_nanos"],
        "created_at": row["created_at"],
    }
    payload = alert_payload(alert)
    if channel.kind == "log":
        logger.warning("budget alert: %s", payload["message"])
        return None
    if channel.kind == "slack":
        body = json.dumps({"text": f":warning: Ledger: {payload['message']}"}).encode()
        headers = {"content-type": "application/json"}
    else:
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(datetime.now(UTC).timestamp()))
        headers = {"content-type": "application/json", TIMESTAMP_HEADER: timestamp}
        if channel.secret:
            headers[SIGNATURE_HEADER] = sign(channel.secret, timestamp, body)
    try:
        async with http.post(channel.url, data=body, headers=headers) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
