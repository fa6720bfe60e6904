"""What the request path leaves behind: nothing for the cyclic garbage collector.

Objects caught in reference cycles are freed only by the collector, whose pauses stop the
whole server. When every request left a cycle (a cancelled task holding its own frame),
full collections paused a served process for up to 100 ms, a stall that hit about one
request in a hundred.
"""

from __future__ import annotations

import gc
import time
from collections import Counter

import openai

from tests.live import LiveServer

MODEL = "gpt-4.1-mini"
REQUESTS = 60


def test_served_requests_leave_no_cyclic_garbage(gateway: LiveServer) -> None:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )

    def ask(stream: bool) -> None:
        if stream:
            for _ in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
            ):
                pass
        else:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}]
            )

    for stream in (False, True):  # connections, encodings and leases are made once
        ask(stream)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for index in range(REQUESTS):
            ask(stream=index % 2 == 1)
        time.sleep(0.3)  # the ledger writer's batch is committed in the background
        gc.collect()
        garbage = Counter(type(item).__qualname__ for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # Background work (the budget guard's periodic sync) may leave a few objects now and
    # then; what grows with the number of requests must be nothing.
    assert sum(garbage.values()) < REQUESTS, garbage.most_common(15)
    assert garbage["Task"] == 0 and garbage["frame"] == 0, garbage.most_common(15)
