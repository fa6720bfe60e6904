"""The C allocator, tuned for a server that handles multi-megabyte request bodies.

glibc hands a freed buffer of more than 128 KiB straight back to the kernel (or trims
it off the heap), so the next one of that size comes back as fresh pages, each faulted
in and zeroed on first touch. A 1M-token prompt is a 4.5 MB body, decoded into a 4.5 MB
string and forwarded as another 4.5 MB buffer: about 4,400 page faults every time,
taken on the event loop while every other request waits. Keeping freed memory of up to
``MMAP_THRESHOLD_BYTES`` for reuse costs a few tens of MB of resident memory at most
and takes those faults away.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024  # blocks up to this size come from the heap
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # free memory the heap keeps before giving it back

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The environment variables glibc reads at start-up for the same settings.
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory_for_reuse() -> bool:
    """Tune glibc's allocator for this process; False where it does not apply.

    Not on another C library or system, and not where the operator has tuned the
    allocator through its own environment variables: their choice stands.
    """
    if not sys.platform.startswith("linux") or any(
        name in os.environ for name in _OPERATOR_SETTINGS
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl's mallopt exists but does nothing and answers 0, as glibc does for a refusal.
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
