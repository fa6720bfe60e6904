"""The providers' own usage and cost reports, asked with an admin key and read into rows.

OpenAI: the Usage API (``/organization/usage/completions`` and ``/embeddings``, daily
buckets grouped by model) and the Costs API (``/organization/costs``, grouped by line
item, whose name starts with the model: ``"gpt-4o-mini-2024-07-18, input"``).
Anthropic: ``/v1/organizations/usage_report/messages`` (grouped by model) and
``/v1/organizations/cost_report`` (grouped by description, which names the model;
amounts are decimal strings of cents). Every report is paged: ``next_page`` is followed
until ``has_more`` is false.

:func:`fetch_reports` returns every page as the provider sent it (to be stored whole);
:func:`report_rows` reads stored pages into per-day, per-model figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from ledger.config import ProviderConfig
from ledger.errors import UpstreamFailed
from ledger.money import Nanos, usd_to_nanos_rounded
from ledger.providers import anthropic, openai
from ledger.providers.http import HttpTransport, ResponseLimits

OPENAI_USAGE_PATHS = ("/organization/usage/completions", "/organization/usage/embeddings")
OPENAI_COSTS_PATH = "/organization/costs"
ANTHROPIC_USAGE_PATH = "/organizations/usage_report/messages"
ANTHROPIC_COST_PATH = "/organizations/cost_report"
_MAX_PAGES = 1000  # a provider whose next_page never ends is not followed for ever


class ReportUnavailable(Exception):
    """The provider's reports could not be had; the message names the provider, never the key."""


@dataclass(frozen=True, slots=True)
class ReportRow:
    """What a provider's reports say for one UTC day and model name (as the provider spells it).

    ``requests`` is None where the provider does not count requests (Anthropic's usage
    report); ``input_tokens`` is every input token, cached and cache writes included.
    """

    day: date
    model: str
    requests: int | None = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: Nanos = 0


def admin_transport(config: ProviderConfig, limits: ResponseLimits | None = None) -> HttpTransport:
    """A transport to the provider's report URL that adds the admin key, and only that key."""
    if not config.admin_api_key:
        raise ReportUnavailable(f"provider {config.name!r} has no admin key (admin_api_key_env)")
    headers = (
        openai.auth_headers(config.admin_api_key)
        if config.kind == "openai"
        else {
            **anthropic.auth_headers(config.admin_api_key),
            "anthropic-version": anthropic.DEFAULT_ANTHROPIC_VERSION,
        }
    )
    return HttpTransport(replace(config, base_url=config.reports_base_url), headers, limits)


async def fetch_reports(
    config: ProviderConfig, transport: HttpTransport, start: datetime, end: datetime
) -> dict[str, Any]:
    """Every page of the provider's usage and cost reports for ``[start, end)`` (UTC days)."""
    days = max(1, (end - start).days)
    if config.kind == "openai":
        window = {"start_time": int(start.timestamp()), "end_time": int(end.timestamp())}
        usage = {
            path.rsplit("/", 1)[1]: await _pages(
                transport,
                path,
                {**window, "bucket_width": "1d", "group_by": "model", "limit": days},
                config.name,
            )
            for path in OPENAI_USAGE_PATHS
        }
        costs = await _pages(
            transport,
            OPENAI_COSTS_PATH,
            {**window, "bucket_width": "1d", "group_by": "line_item", "limit": days},
            config.name,
        )
        return {"kind": "openai", "usage": usage, "costs": costs}
    window_s = {"starting_at": _rfc3339(start), "ending_at": _rfc3339(end)}
    base = config.reports_base_url
    usage_pages = await _pages(
        transport,
        anthropic.api_path(base, ANTHROPIC_USAGE_PATH),
        {**window_s, "bucket_width": "1d", "group_by[]": "model", "limit": min(days, 31)},
        config.name,
    )
    cost_pages = await _pages(
        transport,
        anthropic.api_path(base, ANTHROPIC_COST_PATH),
        {**window_s, "bucket_width": "1d", "group_by[]": "description", "limit": min(days, 31)},
        config.name,
    )
    return {"kind": "anthropic", "usage": {"messages": usage_pages}, "costs": cost_pages}


async def _pages(
    transport: HttpTransport, path: str, query: Mapping[str, Any], provider: str
) -> list[Any]:
    pages: list[Any] = []
    page: str | None = None
    for _ in range(_MAX_PAGES):
        target = path + "?" + urlencode({**query, **({"page": page} if page else {})})
        try:
            response = await transport.send(target, b"", {}, stream=False, method="GET")
            body = await response.read()
            await response.aclose(finished=True)
        except UpstreamFailed as exc:
            raise ReportUnavailable(str(exc)) from exc
        if response.status != 200:
            # The body may hold the key it was sent: only the status is told.
            raise ReportUnavailable(
                f"provider {provider!r} answered {response.status} to {path.split('?')[0]}"
            )
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ReportUnavailable(
                f"provider {provider!r} sent a report that is not JSON"
            ) from exc
        pages.append(data)
        page = data.get("next_page") if isinstance(data, dict) and data.get("has_more") else None
        if not page:
            return pages
    raise ReportUnavailable(f"provider {provider!r} sent more than {_MAX_PAGES} pages")


def report_rows(content: Mapping[str, Any]) -> list[ReportRow]:
    """The stored pages of one pull as rows, one per day and model (provider spelling)."""
    rows: dict[tuple[date, str], ReportRow] = {}

    def add(day: date, model: str, **figures: int | None) -> None:
        row = rows.get((day, model)) or ReportRow(day, model)
        changes: dict[str, Any] = {}
        for name, value in figures.items():
            current = getattr(row, name)
            changes[name] = None if value is None or current is None else current + value
        rows[(day, model)] = replace(row, **changes)

    if content.get("kind") == "openai":
        for pages in content.get("usage", {}).values():
            for day, result in _results(pages, "start_time"):
                add(
                    day,
                    str(result.get("model") or ""),
                    requests=int(result.get("num_model_requests") or 0),
                    input_tokens=int(result.get("input_tokens") or 0),
                    output_tokens=int(result.get("output_tokens") or 0),
                )
        for day, result in _results(content.get("costs", []), "start_time"):
            amount = result.get("amount") or {}
            add(
                day,
                _line_item_model(result.get("line_item")),
                cost_nanos=_float_usd_to_nanos(amount.get("value", 0)),
            )
    else:
        for day, result in _results(content.get("usage", {}).get("messages", []), "starting_at"):
            writes = result.get("cache_creation") or {}
            add(
                day,
                str(result.get("model") or ""),
                requests=None,  # the usage report counts tokens, not requests
                input_tokens=int(result.get("uncached_input_tokens") or 0)
                + int(result.get("cache_read_input_tokens") or 0)
                + int(writes.get("ephemeral_5m_input_tokens") or 0)
                + int(writes.get("ephemeral_1h_input_tokens") or 0),
                output_tokens=int(result.get("output_tokens") or 0),
            )
        for day, result in _results(content.get("costs", []), "starting_at"):
            cents = Decimal(str(result.get("amount") or "0"))  # a decimal string of cents
            add(
                day,
                str(result.get("model") or ""),
                cost_nanos=usd_to_nanos_rounded(cents / 100),
            )
    return sorted(rows.values(), key=lambda r: (r.day, r.model))


def _results(pages: Any, start_key: str) -> list[tuple[date, Mapping[str, Any]]]:
    found: list[tuple[date, Mapping[str, Any]]] = []
    for page in pages or []:
        for bucket in page.get("data", []) if isinstance(page, dict) else []:
            start = bucket.get(start_key)
            day = (
                datetime.fromtimestamp(int(start), UTC).date()
                if isinstance(start, int | float)
                else datetime.fromisoformat(str(start).replace("Z", "+00:00")).date()
            )
            found.extend((day, result) for result in bucket.get("results", []) or [])
    return found


def _line_item_model(line_item: Any) -> str:
    # "gpt-4o-mini-2024-07-18, input" -> the model; a line item that names none is kept whole.
    return str(line_item or "").split(",", 1)[0].strip()


def _float_usd_to_nanos(value: Any) -> Nanos:
    """A JSON number of dollars, taken as the digits it was written with (its shortest
    repr), then to the nano: never the binary fraction's further digits."""
    if isinstance(value, bool):
        return 0
    text = repr(value) if isinstance(value, float) else str(value)
    return usd_to_nanos_rounded(Decimal(text))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
