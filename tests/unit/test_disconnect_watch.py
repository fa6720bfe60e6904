"""The disconnect watch against ASGI ``receive`` callables shaped like uvicorn's.

A whole response asks once whether the client is gone, without waiting; a stream waits
for the disconnect in a task. Asking must never leave a waiter behind in the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger.http import DisconnectWatch


class Connection:
    """What uvicorn's ``receive`` does once the body is read: wait for the disconnect."""

    def __init__(self) -> None:
        self.disconnected = False
        self.event = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self.disconnected:
            await self.event.wait()
        return {"type": "http.disconnect"}

    def drop(self) -> None:
        self.disconnected = True
        self.event.set()

    def waiters(self) -> int:
        return len(self.event._waiters or ())  # the test's one look inside asyncio


@pytest.mark.anyio
async def test_a_client_still_there_is_reported_so_and_nothing_waits_after_asking() -> None:
    connection = Connection()
    watch = DisconnectWatch(connection.receive)
    assert watch() is False
    assert watch() is False
    assert connection.waiters() == 0


@pytest.mark.anyio
async def test_a_client_that_left_is_reported_gone_without_waiting() -> None:
    connection = Connection()
    watch = DisconnectWatch(connection.receive)
    connection.drop()
    assert watch() is True


@pytest.mark.anyio
async def test_a_stream_waits_for_the_disconnect_and_then_reports_it() -> None:
    connection = Connection()
    watch = DisconnectWatch(connection.receive)
    waiting = asyncio.create_task(watch.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    connection.drop()
    await asyncio.wait_for(waiting, 1)
    assert watch() is True


@pytest.mark.anyio
async def test_after_stop_nothing_is_asked_or_awaited() -> None:
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.disconnect"}

    watch = DisconnectWatch(receive)
    watch.stop()
    assert watch() is False
    assert asked == 0
