"""Hard budgets hold for prompts that are not text: PDF files, audio, Anthropic documents.

The fake provider bills these parts as a real one would (``prompt_tokens=N``), far above
their text; Ledger must reserve an upper bound for each (README, "The overspend bound").
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings
from tests.media_samples import b64, pdf_data_url, pdf_with_pages, wav

MODEL, CLAUDE = "gpt-4.1-mini", "claude-sonnet-4-5"
SENT = 20
# Six pages as a provider bills them: about 4,200 tokens a page, text and page images.
PDF_PAGES, PDF_BILLED_TOKENS = 6, 25_000


@pytest.fixture
def local_estimate_gateway(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    """Ledger with Anthropic's count_tokens off: the prompt's bound is Ledger's own."""
    settings = gateway_settings(database_url, fake_upstream)
    providers = tuple(
        dataclasses.replace(p, use_count_tokens=False) if p.kind == "anthropic" else p
        for p in settings.providers
    )
    with LiveServer(dataclasses.replace(settings, providers=providers)) as server:
        yield server


def _budget(gateway: LiveServer, limit_usd: str) -> dict[str, Any]:
    response = gateway.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": limit_usd, "mode": "hard"}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _fire(one: Callable[[], Awaitable[None]]) -> list[int]:
    async def status() -> int:
        try:
            await one()
            return 200
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            return exc.status_code

    async def run() -> list[int]:
        return await asyncio.gather(*(status() for _ in range(SENT)))

    return asyncio.run(run())


def _assert_held(gateway: LiveServer, budget: dict[str, Any], statuses: list[int]) -> int:
    """The budget's spend is within its limit and every refusal is recorded as blocked."""
    admitted = statuses.count(200)
    assert statuses.count(429) == SENT - admitted, statuses
    status = gateway.admin.get(f"/admin/budgets/{budget['id']}/status").json()
    entries = gateway.entries()
    assert len(entries) == SENT
    spent = sum((Decimal(e["cost_usd"]) for e in entries), Decimal(0))
    assert Decimal(status["spent_usd"]) == spent <= Decimal(budget["limit_usd"])
    assert status["reserved_usd"] == "0.000000000"
    assert len([e for e in entries if e["status"] == "blocked"]) == SENT - admitted
    return admitted


@pytest.mark.parametrize(("limit_usd", "fits"), [("0.01", 0), ("0.05", 4)])
def test_concurrent_pdf_requests_never_overspend_a_hard_budget(
    gateway: LiveServer, limit_usd: str, fits: int
) -> None:
    # The case: each request bills 25,000 prompt tokens ($0.01) for its PDF.
    key = gateway.team_key("research")
    budget = _budget(gateway, limit_usd)
    client = openai.AsyncOpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    content = [
        {"type": "text", "text": f"Summarise the report. prompt_tokens={PDF_BILLED_TOKENS}"},
        {
            "type": "file",
            "file": {"filename": "report.pdf", "file_data": pdf_data_url(pdf_with_pages(6))},
        },
    ]

    async def one() -> None:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=10
        )

    statuses = _fire(one)
    assert _assert_held(gateway, budget, statuses) == fits


def test_concurrent_audio_requests_never_overspend_a_hard_budget(gateway: LiveServer) -> None:
    # A minute of audio, billed at OpenAI's published ~10 tokens a second.
    key = gateway.team_key("research")
    budget = _budget(gateway, "0.002")
    client = openai.AsyncOpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    content = [
        {"type": "text", "text": "Transcribe this. prompt_tokens=620"},
        {"type": "input_audio", "input_audio": {"data": b64(wav(60)), "format": "wav"}},
    ]

    async def one() -> None:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=10
        )

    admitted = _assert_held(gateway, budget, _fire(one))
    assert 0 < admitted < SENT


def test_concurrent_anthropic_pdf_documents_never_overspend_a_hard_budget(
    local_estimate_gateway: LiveServer,
) -> None:
    gateway = local_estimate_gateway
    key = gateway.team_key("research")
    budget = _budget(gateway, "0.20")  # each request bills $0.075 of prompt
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    source = {"type": "base64", "media_type": "application/pdf", "data": b64(pdf_with_pages(6))}
    content = [
        {"type": "document", "source": source},
        {"type": "text", "text": f"Summarise the report. prompt_tokens={PDF_BILLED_TOKENS}"},
    ]

    async def one() -> None:
        await client.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": content}]
        )

    admitted = _assert_held(gateway, budget, _fire(one))
    assert 0 < admitted < SENT


def test_under_a_hard_budget_a_file_ledger_cannot_read_is_refused_with_a_400(
    local_estimate_gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    gateway = local_estimate_gateway
    key = gateway.team_key("research")
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    by_id = [{"type": "file", "file": {"file_id": "file-abc123"}}]
    by_url = [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "Summarise it."},
    ]
    # Without a hard budget the request goes through.
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": by_id}])
    _budget(gateway, "5.00")
    forwarded = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": by_id}])
    error = refused.value.response.json()["error"]
    assert error["code"] == "unbounded_prompt" and "file_id" in error["message"]
    with pytest.raises(anthropic.BadRequestError) as refused_claude:
        claude.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": by_url}]
        )
    assert "cannot bound" in refused_claude.value.response.json()["error"]["message"]
    assert len(fake_upstream.requests) == forwarded  # neither reached the provider
    refused_entries = gateway.entries(status="invalid_request")
    assert len(refused_entries) == 2
