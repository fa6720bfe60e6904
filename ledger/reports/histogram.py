"""Latency histograms that add up: fixed, log-spaced buckets of whole milliseconds.

Percentiles cannot be summed, so every rollup row keeps a histogram instead: the
number of requests whose latency fell in each bucket. Histograms of any rows add up
bucket by bucket, and p50/p95 are read from the sum.

Bucket ``b`` (1 to ``BUCKETS - 2``) holds latencies ``L`` with ``2**(b-1) <= L*L < 2**b``,
that is ``sqrt(2)**(b-1) <= L < sqrt(2)**b`` ms; bucket 0 holds 0 ms and the last bucket
everything from ``2**20`` ms (about 17.5 minutes) up. Integer arithmetic only, so the
bucket of a latency is the same in Python, in SQLite and in PostgreSQL.

Precision: a percentile is reported as the geometric middle of its bucket, so it is
within a factor of ``2**0.25`` (about +/-19 %) of the exact nearest-rank percentile for
latencies between 1 ms and 17.5 minutes. Above that it is reported as ``2**20`` ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ledger.db.tables import LATENCY_BUCKETS

BUCKETS = LATENCY_BUCKETS
LAST = BUCKETS - 1


def _lower_bound(bucket: int) -> int:
    # The smallest whole L with L*L >= 2**(bucket-1).
    if bucket == 0:
        return 0
    return math.isqrt(2 ** (bucket - 1) - 1) + 1


# LOWER_BOUNDS[b] is the smallest latency (ms) in bucket b; used to build the SQL CASE.
LOWER_BOUNDS: tuple[int, ...] = tuple(_lower_bound(b) for b in range(BUCKETS))


def bucket_of(latency_ms: int) -> int:
    """The histogram bucket of one latency in milliseconds."""
    if latency_ms <= 0:
        return 0
    return min((latency_ms * latency_ms).bit_length(), LAST)


def empty() -> list[int]:
    """A histogram with every count at zero."""
    return [0] * BUCKETS


def add_into(target: list[int], counts: Sequence[int]) -> None:
    """Add ``counts`` to ``target`` bucket by bucket."""
    for index, count in enumerate(counts):
        target[index] += count


def percentile(counts: Sequence[int], fraction: float) -> int | None:
    """The nearest-rank percentile (``fraction`` 0.5 for p50) in ms, or None with no requests."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(total * fraction))
    seen = 0
    for bucket, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return representative(bucket)
    return representative(LAST)


def representative(bucket: int) -> int:
    """The value reported for a bucket: its geometric middle, whole milliseconds."""
    if bucket == 0:
        return 0
    if bucket == LAST:
        return 2**20
    return round(2 ** ((bucket - 0.5) / 2))
