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
from ledger.providers import Provider


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the name the client sent
    provider: Provider
    upstream_model: str
    free: bool = False


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
        self._configured = {
            m.name: Route(m.name, providers[m.provider], m.upstream_model, m.free)
            for m in settings.models
        }

    def provider_speaking(self, protocol: str) -> Provider | None:
        """The first configured provider that speaks ``protocol`` (for calls naming no model)."""
        return next((p for p in self._providers.values() if p.speaks(protocol)), None)

    def resolve(self, model: str) -> Route:
        route = self._configured.get(model)
        if route is not None:
            return route
        price = self._prices.price_at(model, datetime.now(UTC))
        provider = self._provider_for(price.provider) if price is not None else None
        if provider is not None:
            return Route(model, provider, model)
        raise UnknownModel(f"The model '{model}' does not exist or is not served by this gateway.")

    def price_of(self, route: Route, at: datetime) -> Price | None:
        """The price in effect for ``route`` at ``at``: its own name's, else its upstream's."""
        return self._prices.price_at(route.model, at) or self._prices.price_at(
            route.upstream_model, at
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
        names = dict.fromkeys([*self._configured, *self._prices.models()])
        routes = []
        for name in names:
            try:
                route = self.resolve(name)
            except UnknownModel:
                continue
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

    def _provider_for(self, named: str) -> Provider | None:
        # A price names a provider: a configured one by that name, else the first of that
        # kind (the catalog says "openai" or "anthropic"), else the mock if there is one.
        provider = self._providers.get(named)
        if provider is not None:
            return provider
        for provider in self._providers.values():
            if provider.kind == "mock" or provider.kind == named:
                return provider
        return None


def _names(route: Route, price: Price | None) -> tuple[str, ...]:
    # The canonical name lets "gpt-4.1-mini" allow "gpt-4.1-mini-2025-04-14".
    names = [route.model, route.upstream_model]
    if price is not None:
        names.append(price.model)
    return tuple(dict.fromkeys(names))
