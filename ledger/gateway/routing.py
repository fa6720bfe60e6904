"""Which provider serves a model, under which upstream name, and who may use it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.access import Patterns, allows
from ledger.admin.identity import Principal
from ledger.config import Settings
from ledger.db.prices import LivePrices
from ledger.errors import PermissionDenied, UnknownModel
from ledger.pricing import Price
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

    ``[[models]]`` adds routes or overrides the catalog's for the names it lists; every
    other priced model (its dated aliases included) is served by the provider its price
    names, else by the first provider of that kind, else by the built-in mock provider.
    What a caller may use is narrowed only by ``allowed_models`` (see :meth:`check_allowed`).
    """

    def __init__(
        self, settings: Settings, providers: dict[str, Provider], prices: LivePrices
    ) -> None:
        self._providers = providers
        self._prices = prices
        self._allowed = settings.allowed_models
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

    def provider_speaking(self, protocol: str) -> Provider | None:
        """The first configured provider that speaks ``protocol`` (for calls naming no model)."""
        return next((p for p in self._providers.values() if p.speaks(protocol)), None)

    def provider_named(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def resolve(self, model: str) -> Route:
        route = self._configured.get(model)
        if route is not None:
            return route
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
        raise UnknownModel(
            f"No price is known for model '{model}', so it is not served. Price it with "
            "POST /admin/prices or [[prices]] in the config file, or set unknown_models "
            '("record" or "estimate:MODEL") on the provider that should serve it.'
        )

    def price_of(self, route: Route, at: datetime) -> Price | None:
        """The price in effect for ``route`` at ``at``: its own name's, else its upstream's."""
        return self._prices.price_at(route.model, at, route.catalog) or self._prices.price_at(
            route.upstream_model, at, route.catalog
        )

    def check_allowed(self, principal: Principal, route: Route, price: Price | None) -> None:
        """Refuse (403 ``model_not_allowed``) a model outside any ``allowed_models`` that applies."""
        names = _names(route, price)
        for level, patterns in self._rules(principal):
            if not allows(patterns, names):
                raise PermissionDenied(
                    f"The model '{route.model}' is not allowed for this {level} "
                    f"(allowed_models: {', '.join(patterns or ())}).",
                    code="model_not_allowed",
                    param="model",
                )

    def models(self, principal: Principal | None = None) -> list[Route]:
        """Every model a caller may use now: routed, priced (or free) and allowed."""
        now = datetime.now(UTC)
        catalogs = dict.fromkeys(self._catalogs.values())
        names = dict.fromkeys(
            [*self._configured, *(n for c in catalogs for n in self._prices.models(c))]
        )
        routes = []
        for name in names:
            try:
                route = self.resolve(name)
            except UnknownModel:
                continue
            if route.unpriced is not None:
                continue  # only unknown_models would take it: not listed
            price = self.price_of(route, now)
            if price is None and not route.free:
                continue  # it would be refused as model_not_priced
            rules = self._rules(principal) if principal is not None else [("", self._allowed)]
            if all(allows(patterns, _names(route, price)) for _, patterns in rules):
                routes.append(route)
        return routes

    def _rules(self, principal: Principal) -> list[tuple[str, Patterns | None]]:
        return [
            ("gateway", self._allowed),
            ("team", principal.team_allowed_models),
            ("key", principal.key_allowed_models),
        ]


def _names(route: Route, price: Price | None) -> tuple[str, ...]:
    # The canonical name lets "gpt-4.1-mini" allow "gpt-4.1-mini-2025-04-14".
    names = [route.model, route.upstream_model]
    if price is not None:
        names.append(price.model)
    return tuple(dict.fromkeys(names))


def _catalog_providers(providers: dict[str, Provider]) -> dict[str, str | None]:
    # The mock provider serves any catalog model: genai-prices chooses from the name.
    catalogs = load_providers()
    return {
        name: None
        if provider.kind == "mock"
        else provider.catalog or catalog_provider_for(provider.kind, provider.base_url, catalogs)
        for name, provider in providers.items()
    }
