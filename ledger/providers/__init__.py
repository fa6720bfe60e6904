"""Providers: one module per protocol, one transport per configured provider."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.config import ProviderConfig, Settings
from ledger.providers import anthropic, openai, openai_responses
from ledger.providers.base import Transport, UpstreamResponse
from ledger.providers.http import HttpTransport, ResponseLimits
from ledger.providers.mock import MockTransport

__all__ = ["Provider", "Transport", "UpstreamResponse", "build_providers"]

MOCK_PROVIDER_NAME = "mock"
_OPENAI_PATHS = {
    "chat": openai.CHAT_COMPLETIONS_PATH,
    "responses": openai_responses.RESPONSES_PATH,
    "embeddings": openai.EMBEDDINGS_PATH,
    "completions": openai.COMPLETIONS_PATH,
}


@dataclass(frozen=True, slots=True)
class Provider:
    """A configured upstream: its protocol kind and the transport that reaches it."""

    name: str
    kind: str  # openai | anthropic | mock
    transport: Transport
    base_url: str = ""
    use_count_tokens: bool = True
    catalog: str = ""  # see ProviderConfig.catalog
    unknown_models: str = "refuse"  # see ProviderConfig.unknown_models

    def speaks(self, protocol: str) -> bool:
        return self.kind in ("mock", protocol)

    def path(self, endpoint: str) -> str:
        """The upstream path for an endpoint: ``chat``, ``responses``, ``embeddings``,
        ``completions``, ``messages`` or ``count_tokens``."""
        if endpoint in _OPENAI_PATHS:
            return _OPENAI_PATHS[endpoint]
        suffix = anthropic.MESSAGES_PATH if endpoint == "messages" else anthropic.COUNT_TOKENS_PATH
        return anthropic.api_path(self.base_url, suffix)


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per ``[[providers]]`` entry, or the built-in mock when there are none."""
    if not settings.providers:
        return {MOCK_PROVIDER_NAME: Provider(MOCK_PROVIDER_NAME, "mock", MockTransport())}
    limits = ResponseLimits(settings.max_response_bytes, settings.max_decompression_ratio)
    return {config.name: _provider(config, limits) for config in settings.providers}


def _provider(config: ProviderConfig, limits: ResponseLimits) -> Provider:
    if config.kind == "mock":
        return Provider(config.name, "mock", MockTransport())
    auth = (
        openai.auth_headers(config.api_key)
        if config.kind == "openai"
        else anthropic.auth_headers(config.api_key)
    )
    return Provider(
        name=config.name,
        kind=config.kind,
        transport=HttpTransport(config, auth, limits),
        base_url=config.normalised_base_url,
        use_count_tokens=config.use_count_tokens,
        catalog=config.catalog,
        unknown_models=config.unknown_models,
    )
