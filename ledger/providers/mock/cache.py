"""The mock's prompt cache: which prompt prefixes were seen recently, in this process only."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

_DEFAULT_MAX_ENTRIES = 4096


class PrefixCache:
    """Prefix hashes with an expiry, least recently used dropped first beyond ``max_entries``.

    A hit refreshes the entry's lifetime, as the providers' caches do.
    """

    def __init__(
        self,
        *,
        max_entries: int = _DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def hit(self, key: Hashable) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        now = self._clock()
        expires, ttl = entry
        if expires <= now:
            del self._entries[key]
            return False
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        return True

    def store(self, key: Hashable, ttl_s: float) -> None:
        previous = self._entries.get(key)
        ttl = max(ttl_s, previous[1]) if previous else ttl_s
        self._entries[key] = (self._clock() + ttl, ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
