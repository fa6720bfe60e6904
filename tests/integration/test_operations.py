"""The first hour of running Ledger: what its logs say, and a server ready when it says so."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream
from tests.processes import LedgerProcess, write_provider_config

# -- start-up -----------------------------------------------------------------------------


def test_encodings_are_built_before_the_server_answers_its_first_request(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # A fresh process, nothing sent yet: the first request must not wait for a tokenizer.
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    config.write_text(
        config.read_text()
        + '\n[[models]]\nname = "legacy"\nprovider = "openai"\nupstream_model = "gpt-3.5-turbo"\n'
        + '\n[[models]]\nname = "gpt-4.1-mini"\nprovider = "openai"\n'
        + 'upstream_model = "gpt-4.1-mini"\n'
    )
    with LedgerProcess(database_url, config=config) as server:
        ready = httpx.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    # o200k for gpt-4.1-mini (and Anthropic's estimate), cl100k for gpt-3.5-turbo.
    assert ready.json()["encodings"] == ["cl100k_base", "o200k_base"]


def test_without_configured_models_the_server_builds_the_current_encoding_only(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    with LedgerProcess(database_url, config=config) as server:
        ready = httpx.get(server.url + "/readyz", timeout=5)
    assert ready.json()["encodings"] == ["o200k_base"]
