"""Price lookup on the hot path: the full genai-prices registry against the old 27-entry book.

Each request resolves its model's price once (``LivePrices.price_at``). This times that
lookup for names as clients send them (catalog names, dated snapshots, ``openai/…``
prefixes, a genai-only model) through the registry Ledger now loads (our catalog plus
about 2,300 genai-prices versions, names resolved by its match rules and cached), and
the same names through a ``PriceBook`` of our 27-entry catalog alone (the build before
genai-prices). No database: the registry is built in memory as ``load_registry`` builds it.

    python bench/price_lookup_bench.py [--number 200000]
"""

from __future__ import annotations

import argparse
import timeit
from datetime import UTC, datetime

from ledger.db.prices import PriceRegistry, installed_catalog, installed_resolver
from ledger.pricing import PriceBook, load_catalog

NAMES = [
    ("gpt-4.1-mini", "openai"),
    ("gpt-4.1-mini-2025-04-14", "openai"),
    ("openai/gpt-4o", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5-20251001", "anthropic"),
]
GENAI_ONLY = [("gpt-5.4-mini", "openai"), ("claude-opus-4-8", "anthropic")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    old = PriceBook(load_catalog())
    genai: dict[str, list] = {}
    for price in installed_catalog().prices:
        genai.setdefault(price.provider, []).append(price)
    registry = PriceRegistry(
        overrides=PriceBook([]),
        catalog=PriceBook(load_catalog()),
        genai={provider: PriceBook(prices) for provider, prices in genai.items()},
        resolver=installed_resolver(),
    )
    print(f"registry: {sum(len(v) for v in genai.values())} genai-prices versions + 27 ours")
    for label, names in (("catalog names and aliases", NAMES), ("genai-prices only", GENAI_ONLY)):
        for name, provider in names:
            registry.price_at(name, now, provider)  # warm the name cache, as a first request does
        new = timeit.timeit(
            lambda names=names: [registry.price_at(n, now, p) for n, p in names], number=args.number
        )
        line = f"{label:28} registry {new / args.number / len(names) * 1e6:.2f} us/lookup"
        if names is NAMES:
            before = timeit.timeit(
                lambda names=names: [old.price_at(n, now) for n, _ in names], number=args.number
            )
            line += f"   old 27-entry book {before / args.number / len(names) * 1e6:.2f} us/lookup"
        print(line)


if __name__ == "__main__":
    main()
