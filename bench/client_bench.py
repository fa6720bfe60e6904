"""CPU per request of an upstream HTTP client alone: aiohttp (Ledger's transport) or pyreqwest.

One process, ``--concurrency`` tasks posting a small chat body to the static upstream
(nginx from ``upstream.py``) for ``--seconds``; prints requests/s and the CPU per request
of the whole process and of its event loop thread. pyreqwest is not a dependency of
Ledger: ``pip install pyreqwest`` to measure it (BENCHMARKS.md, eighth session, says
why the gateway kept aiohttp).

    python bench/client_bench.py aiohttp pyreqwest pyreqwest-streamed
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from servers import free_port, read_stat  # noqa: E402
from upstream import NginxUpstream  # noqa: E402

BODY = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "authorization": "Bearer sk-bench",
    "user-agent": "ledger",
}


def loop_thread_seconds() -> float:
    _, user, system = read_stat(Path(f"/proc/self/task/{threading.get_native_id()}/stat"))
    return (user + system) / os.sysconf("SC_CLK_TCK")


def process_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def client(
    kind: str, url: str
) -> tuple[Callable[[], Awaitable[bytes]], Callable[[], Awaitable[None]]]:
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

        async def post() -> bytes:
            response = await session.post(url, data=BODY, headers=HEADERS)
            body = await response.read()
            response.release()
            return body

        return post, session.close
    from pyreqwest.client import ClientBuilder

    reqwest = ClientBuilder().build()
    if kind == "pyreqwest":

        async def post() -> bytes:
            response = await reqwest.post(url).headers(HEADERS).body_bytes(BODY).build().send()
            return bytes(await response.bytes())

    else:  # pyreqwest-streamed: as a stream relay would read it

        async def post() -> bytes:
            request = (
                reqwest.post(url).headers(HEADERS).body_bytes(BODY)
                .streamed_read_buffer_limit(0).build_streamed()
            )  # fmt: skip
            async with request as response:
                parts = []
                while (chunk := await response.body_reader.read_chunk()) is not None:
                    parts.append(bytes(chunk))
                return b"".join(parts)

    return post, reqwest.close


async def measure(kind: str, url: str, concurrency: int, seconds: float) -> None:
    post, close = await client(kind, url)
    for _ in range(200):
        await post()
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await post()
            done += 1

    process, loop_thread, started = process_seconds(), loop_thread_seconds(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    print(
        f"{kind:20s} {done / elapsed:7.0f} req/s  CPU {(process_seconds() - process) / done * 1e6:4.0f}"
        f" µs/req, of which the loop thread {(loop_thread_seconds() - loop_thread) / done * 1e6:4.0f}",
        flush=True,
    )
    await close()
    await asyncio.sleep(0.1)  # let pyreqwest's runtime finish before the next client


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "clients", nargs="+", choices=("aiohttp", "pyreqwest", "pyreqwest-streamed")
    )
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--upstream-cpus", default=str((os.cpu_count() or 1) - 1))
    args = parser.parse_args()
    import uvloop

    upstream = NginxUpstream(free_port(), cpus=args.upstream_cpus).start()
    try:
        for kind in args.clients:
            url = upstream.url + "/json/v1/chat/completions"
            uvloop.run(measure(kind, url, args.concurrency, args.seconds))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
