"""Which provider serves a model, under which upstream name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.config import Settings
from ledger.db.prices import LivePrices
from ledger.errors import UnknownModel
from ledger.pricing.genai import catalog_provider_for, load_providers
from ledger.providers import Provider


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the name the client sent
    provider: Provider
    upstream_model: str
    free: bool = False
    catalog: str | None = None  # the genai-prices provider whose prices apply
    unpriced: str | None = None  # the provider's unknown_models rule, for a model none prices


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
        self._catalogs = _catalog_providers(providers)
        self._configured = {
            m.name: Route(
                m.name,
                providers[m.provider],
                m.upstream_model,
                m.free,
                catalog=self._catalogs[m.provider],
            )
            for m in settings.models
        }

    def resolve(self, model: str) -> Route:
        route = self._configured.get(model)
        if route is not None:
            return route
        if not self._configured:
            now = datetime.now(UTC)
            # The first provider whose catalog prices the name serves it, as sent.
            for provider in self._providers.values():
                catalog = self._catalogs[provider.name]
                price = self._prices.price_at(model, now, catalog)
                # A price tagged for another provider does not make this one serve it.
                if price is not None and (
                    catalog is None or price.provider in ("", catalog, provider.kind)
                ):
                    return Route(model, provider, model, catalog=catalog)
            for provider in self._providers.values():
                if provider.unknown_models != "refuse":
                    return Route(
                        model,
                        provider,
                        model,
                        catalog=self._catalogs[provider.name],
                        unpriced=provider.unknown_models,
                    )
        raise UnknownModel(f"The model '{model}' does not exist or is not served by this gateway.")

    def models(self) -> list[Route]:
        """What is served and priced (never a model only ``unknown_models`` would take)."""
        if self._configured:
            return list(self._configured.values())
        routes = []
        seen: set[str] = set()
        for provider in self._providers.values():
            catalog = self._catalogs[provider.name]
            for name in self._prices.models(catalog):
                if name in seen:
                    continue
                try:
                    route = self.resolve(name)
                except UnknownModel:
                    continue
                if route.unpriced is None:
                    seen.add(name)
                    routes.append(route)
        return routes


def _catalog_providers(providers: dict[str, Provider]) -> dict[str, str | None]:
    # The mock provider serves any catalog model: genai-prices chooses from the name.
    catalogs = load_providers()
    return {
        name: None
        if provider.kind == "mock"
        else provider.catalog or catalog_provider_for(provider.kind, provider.base_url, catalogs)
        for name, provider in providers.items()
    }
