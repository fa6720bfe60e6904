"""Re-rating: after a price correction, one adjustment entry per entry whose cost changed.

A price that was wrong for past dates is corrected with a new price version whose
``effective_from`` lies in the past. Re-rating then prices every ledger entry of the
model in a time range again at the version in effect at its start, and writes the
difference, bucket by bucket, as a new entry: ``kind = "adjustment"``, its
``corrects_request_id`` the original's, the original's start, team, key, user, tags
and model, no tokens (they were counted once, on the original). The original is never
touched. The adjustments go through the ledger writer's unit of work, so budgets'
spend, rollups and reports follow, and an adjustment dated in a closed month becomes a
late line of the next open month, as every late entry does.

An adjustment's request id is derived from the original's, the price version it
re-rates to and the cost it brings it to, so re-rating twice writes nothing; an entry whose adjustments already
bring it to the price in effect is skipped. Entries recorded as ``unpriced``
(``unknown_models = "record"``) are priced this way once their price exists.

What an entry does not keep cannot be re-rated: audio tokens and per-call tool counts
are not columns, so tool fees stay as charged and audio is priced as text tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db.ledger import LedgerEntry
from ledger.db.tables import LedgerEntryRow, PriceRow
from ledger.db.writer import write_entries
from ledger.pricing import Price
from ledger.pricing.prices import price_cost
from ledger.usage import Usage

# The buckets an adjustment corrects, as ledger entry columns.
BUCKETS = (
    "input_cost_nanos",
    "cache_read_cost_nanos",
    "cache_write_cost_nanos",
    "output_cost_nanos",
    "request_fee_nanos",
)
_BATCH = 500
# Multipliers the gateway applied, as it noted them: "inference_geo=us x1.1".
_NOTED_DIMENSION = re.compile(r"^(inference_geo|speed|regional)=(\S+) x")


@dataclass(frozen=True, slots=True)
class RerateResult:
    """What a re-rating did: entries that moved, their total change, what it skipped."""

    entries: int
    difference_nanos: int
    unchanged: int
    without_price: int
    adjustment_ids: list[str]


PriceAt = Callable[[str, datetime], Price | None]


async def rerate(
    engine: AsyncEngine, price_at: PriceAt, model: str, since: datetime, until: datetime
) -> RerateResult:
    """Re-rate the entries of ``model`` that started in ``[since, until)``.

    ``price_at(model, at)`` is the price registry's lookup (the gateway's). An entry
    matches by its requested model or by its price version's model.
    """
    e = LedgerEntryRow
    async with engine.connect() as connection:
        price_ids = select(PriceRow.id).where(PriceRow.model == model)
        originals = (
            await connection.execute(
                select(*e.__table__.c)
                .where(
                    e.kind == "request",
                    e.started_at >= since,
                    e.started_at < until,
                    or_(e.requested_model == model, e.price_id.in_(price_ids)),
                )
                .order_by(e.started_at, e.id)
            )
        ).all()
        corrected: dict[str, list[int]] = {}
        if originals:
            sums = await connection.execute(
                select(e.corrects_request_id, *(func.sum(getattr(e, b)) for b in BUCKETS))
                .where(
                    e.kind == "adjustment",
                    e.corrects_request_id.is_not(None),
                    e.started_at >= since,
                    e.started_at < until,
                )
                .group_by(e.corrects_request_id)
            )
            corrected = {row[0]: [int(v or 0) for v in row[1:]] for row in sums}
    adjustments: list[LedgerEntry] = []
    unchanged = without_price = 0
    for original in originals:
        if not _was_priced(original):
            continue
        price = price_at(model, original.started_at)
        if price is None:
            without_price += 1
            continue
        current = [int(getattr(original, b) or 0) for b in BUCKETS]
        for index, value in enumerate(corrected.get(original.request_id, ())):
            current[index] += value
        cost = price_cost(_usage_of(original), price, at=original.started_at)
        target = [cost.input, cost.cache_read, cost.cache_write, cost.output, cost.request_fee]
        difference = [t - c for t, c in zip(target, current, strict=True)]
        if not any(difference):
            unchanged += 1
            continue
        adjustments.append(_adjustment(original, price, target, difference))
    written: list[str] = []
    for start in range(0, len(adjustments), _BATCH):
        written += await write_entries(engine, adjustments[start : start + _BATCH])
    done = set(written)
    moved = [a for a in adjustments if a.request_id in done]
    return RerateResult(
        entries=len(moved),
        difference_nanos=sum(a.cost_nanos for a in moved),
        unchanged=unchanged + len(adjustments) - len(moved),
        without_price=without_price,
        adjustment_ids=[a.request_id for a in moved],
    )


def adjustment_request_id(
    original_request_id: str, price_id: int | None, target: Sequence[int]
) -> str:
    """The adjustment's id: the same original re-rated to the same version, the same id.

    The target cost is part of it: a price version replaced in place (the same model,
    start and origin posted again) keeps its id but may charge differently.
    """
    text = "\x00".join([original_request_id, str(price_id), *map(str, target)])
    return f"adj_{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def _was_priced(row: Any) -> bool:
    # Refused and failed requests that consumed nothing cost nothing at any price; an
    # unpriced entry is what re-rating is for.
    if row.status == "unpriced":
        return True
    tokens = (
        row.input_tokens
        + row.cache_read_tokens
        + row.cache_write_5m_tokens
        + row.cache_write_1h_tokens
        + row.output_tokens
    )
    return tokens > 0 or row.cost_nanos != 0


def _usage_of(row: Any) -> Usage:
    noted: dict[str, Any] = {}
    for note in json.loads(row.pricing_notes) if row.pricing_notes else []:
        match = _NOTED_DIMENSION.match(str(note))
        if match:
            name, value = match[1], match[2]
            noted[name] = value == "true" if name == "regional" else value
    return Usage(
        input_tokens=row.input_tokens,
        cache_read_tokens=row.cache_read_tokens,
        cache_write_5m_tokens=row.cache_write_5m_tokens,
        cache_write_1h_tokens=row.cache_write_1h_tokens,
        output_tokens=row.output_tokens,
        reasoning_tokens=row.reasoning_tokens,
        service_tier=row.service_tier,
        **noted,
    )


def _adjustment(
    original: Any, price: Price, target: list[int], difference: list[int]
) -> LedgerEntry:
    parts = dict(zip(BUCKETS, difference, strict=True))
    return LedgerEntry(
        request_id=adjustment_request_id(original.request_id, price.id, target),
        kind="adjustment",
        corrects_request_id=original.request_id,
        # Dated as the original: it lands in the same day, month and budget period (a
        # closed month's as a late line of the next open month).
        started_at=original.started_at,
        ended_at=original.started_at,
        endpoint=original.endpoint,
        team_id=original.team_id,
        key_id=original.key_id,
        end_user=original.end_user,
        end_user_session=original.end_user_session,
        tags=json.loads(original.tags) if original.tags else [],
        requested_model=original.requested_model,
        served_model=original.served_model,
        provider=original.provider,
        status="ok",
        http_status=200,
        usage_source="none",
        service_tier=original.service_tier,
        price_id=price.id,
        priced_model=price.model,
        pricing_notes=json.dumps([f"re-rated to price version {price.id}"]),
        cost_nanos=sum(difference),
        **parts,
    )
