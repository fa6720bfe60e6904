"""The price catalog shipped with Ledger (``catalog.toml``, next to this module)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ledger.pricing.prices import Price, PriceError, price_from_mapping

_CATALOG_FILE = "catalog.toml"


def load_catalog() -> list[Price]:
    """Every price version in the shipped catalog, in file order.

    Raises ``PriceError`` naming the entry if the file holds an invalid price, so a
    bad edit fails the test suite rather than a request.
    """
    text = resources.files("ledger.pricing").joinpath(_CATALOG_FILE).read_text(encoding="utf-8")
    return _prices_from_document(tomllib.loads(text))


def _prices_from_document(document: Mapping[str, Any]) -> list[Price]:
    entries = document.get("models", [])
    prices = []
    for number, entry in enumerate(entries, start=1):
        try:
            prices.append(price_from_mapping(entry))
        except PriceError as exc:
            raise PriceError(f"{_CATALOG_FILE}, entry {number}: {exc}") from None
    return prices
