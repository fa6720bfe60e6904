"""Which provider serves a model, under which upstream name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.config import Settings
from ledger.db.prices import LivePrices
from ledger.errors import UnknownModel
from ledger.providers import Provider


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the name the client sent
    provider: Provider
    upstream_model: str
    free: bool = False


class ModelRouter:
    """Resolves model names: configured ``[[models]]`` first, then the price catalog.

    With no ``[[models]]``, a catalog model is served by the first provider of its
    own kind, or by the built-in mock provider when no providers are configured.
    """

    def __init__(
        self, settings: Settings, providers: dict[str, Provider], prices: LivePrices
    ) -> None:
        self._providers = providers
        self._prices = prices
        self._configured = {
            m.name: Route(m.name, providers[m.provider], m.upstream_model, m.free)
            for m in settings.models
        }

    def resolve(self, model: str) -> Route:
        route = self._configured.get(model)
        if route is not None:
            return route
        if not self._configured:
            price = self._prices.price_at(model, datetime.now(UTC))
            provider = self._provider_for_kind(price.provider if price else None)
            if price is not None and provider is not None:
                return Route(model, provider, model)
        raise UnknownModel(f"The model '{model}' does not exist or is not served by this gateway.")

    def models(self) -> list[Route]:
        if self._configured:
            return list(self._configured.values())
        routes = []
        for name in self._prices.models():
            try:
                routes.append(self.resolve(name))
            except UnknownModel:
                continue
        return routes

    def _provider_for_kind(self, kind: str | None) -> Provider | None:
        for provider in self._providers.values():
            if provider.kind == "mock" or provider.kind == kind:
                return provider
        return None
