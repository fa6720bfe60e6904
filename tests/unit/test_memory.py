"""A large prompt's body reuses freed memory instead of faulting in fresh pages.

Each case runs in a fresh interpreter (the allocator is tuned once per process, for
good) and does what the gateway does with a 4.5 MB body: joins it from the socket's
64 KiB reads, decodes it, and builds the body it forwards; then counts the page faults
of doing that again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_BODY_CYCLES = """
import json, os, resource, sys
from ledger.memory import keep_freed_memory_for_reuse

tuned = keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else None

def handle_one_body():
    reads = [os.urandom(16) * 4096 for _ in range(70)]  # 4.5 MB in 64 KiB reads
    raw = b"".join(reads)
    del reads
    text = raw.decode("latin-1")
    forwarded = b"".join((b"{", memoryview(raw)[1:]))
    return len(text) + len(forwarded)

for _ in range(3):
    handle_one_body()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    handle_one_body()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"tuned": tuned, "faults_per_body": faults}))
"""


def _faults_per_body(mode: str, **env: str) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", _BODY_CYCLES, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **env},
        timeout=60,
    )
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_a_large_body_reuses_freed_memory_instead_of_faulting_in_pages() -> None:
    plain = _faults_per_body("plain")
    if plain["faults_per_body"] < 1000:
        pytest.skip("this C library already keeps freed buffers; nothing to tune")
    tuned = _faults_per_body("tuned")
    assert tuned["tuned"] is True
    # 4.5 MB of fresh pages is ~1,100 faults per buffer; reused memory needs none.
    assert tuned["faults_per_body"] < 50, (plain, tuned)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_an_operators_own_allocator_settings_are_left_alone() -> None:
    result = _faults_per_body("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert result["tuned"] is False
