"""A client that has read a whole response can read its ledger entry at once.

The README promises it: ``GET /api/usage/{request_id}`` straight after the response's last
byte answers 200 with the entry, never 404. Streams are the hard case: a provider may end
its body a while after the last event, and the response does not wait for that end. Each
kind of request (OpenAI and Anthropic, streamed or not) on both databases, with batches
committed in the serving process and by a writer process (the default of ``ledger serve``).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import ALL, read_whole
from tests.live import LiveServer, gateway_settings

# Long enough that an entry recorded only once the provider's body has ended is missed.
BODY_END_DELAY_MS = 400


@pytest.fixture(params=["in-process", "writer-process"])
def served(
    request: pytest.FixtureRequest, database_url: str, fake_upstream: FakeUpstream
) -> Iterator[LiveServer]:
    writer_process = request.param == "writer-process"
    settings = gateway_settings(database_url, fake_upstream, writer_process=writer_process)
    with LiveServer(settings) as server:
        yield server


def test_a_client_that_read_the_whole_response_reads_its_entry_at_once(
    served: LiveServer,
) -> None:
    key = served.team_key()
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as http:
        for round_ in range(3):
            for kind in ALL:
                text = f"read after {kind} {round_} reply_words=20 body_end_delay_ms={BODY_END_DELAY_MS}"
                delivered = read_whole(http, kind, text)
                assert delivered.complete, kind
                # Once, at once: no waiting, no retry.
                response = served.admin.get(f"/api/usage/{delivered.request_id}")
                assert response.status_code == 200, (str(kind), response.text)
                entry = response.json()
                assert entry["status"] == "ok", entry
                assert entry["usage_source"] == "provider", entry
                assert entry["usage"]["output_tokens"] == delivered.output_tokens, entry
                assert Decimal(entry["cost_usd"]) == delivered.cost(kind), entry
