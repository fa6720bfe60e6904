"""Prices and costs: the shipped catalog and "the price in effect at time t".

Pure domain code: integer nano-USD throughout (see ``ledger.money``), no web
framework and no database.
"""

from ledger.pricing.book import PriceBook, PriceDiff, diff_prices
from ledger.pricing.catalog import load_catalog
from ledger.pricing.price_map import ImportResult, parse_price_map, parse_price_map_text
from ledger.pricing.prices import (
    CostBreakdown,
    Price,
    PriceError,
    batch_price,
    price_cost,
    price_from_mapping,
    requested_factor,
    worst_case_cost,
)

__all__ = [
    "CostBreakdown",
    "ImportResult",
    "Price",
    "PriceBook",
    "PriceDiff",
    "PriceError",
    "batch_price",
    "diff_prices",
    "load_catalog",
    "parse_price_map",
    "parse_price_map_text",
    "price_cost",
    "price_from_mapping",
    "requested_factor",
    "worst_case_cost",
]
