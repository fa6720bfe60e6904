"""Load drivers: wrk for request/response load, a raw-socket client for streams and big prompts.

- ``run_wrk``: wrk (C, one thread, pinned to a core) with ``wrk_post.lua``; closed loop,
  latency percentiles in microseconds, requests sent and completed.
- ``python bench/load.py stream …``: sequential streaming requests on one keep-alive
  connection over a raw asyncio socket (no HTTP library in the way); prints, as JSON, the
  time to the first event of every stream and the gaps between events.
- ``python bench/load.py bigprompt …``: sends a ~1M-token prompt again and again for a
  while (to measure small requests next to it).

The harness runs both Python clients with ``taskset`` on the load core.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"


def run_wrk(
    url: str,
    body_file: Path,
    *,
    connections: int,
    seconds: float,
    token: str | None = None,
    cpus: str | None = None,
) -> dict[str, Any]:
    """One wrk run; returns the JSON the Lua script prints, plus requests/s."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is needed: apt-get install -y wrk")
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(WRK_SCRIPT), url, "--", str(body_file), f"Bearer {token}" if token else "",
    ]  # fmt: skip
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")
    figures = json.loads(lines[-1])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["connections"] = connections
    figures["errors"] = sum(
        figures[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return figures


def run_python_client(args: list[str], *, cpus: str | None, timeout: float) -> dict[str, Any]:
    """Run this module's CLI in its own process (pinned to ``cpus``) and read its JSON."""
    import sys

    command = [sys.executable, str(Path(__file__).resolve()), *args]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"load client failed: {result.stdout[-2000:]} {result.stderr[-3000:]}")
    return json.loads(lines[-1])


# -- a raw HTTP/1.1 client ----------------------------------------------------------------


class _Connection:
    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path
        self.token = token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**24)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request_bytes(self, body: bytes) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        return head.encode() + b"\r\n" + body

    async def exchange(
        self, body: bytes, delays: list[float] | None = None
    ) -> tuple[int, float, list[float], float]:
        """Send one request; return status, start, each SSE event's arrival, the end."""
        assert self.reader is not None and self.writer is not None
        data = self.request_bytes(body)
        started = time.perf_counter()
        self.writer.write(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        now = time.perf_counter()
        status = int(head.split(b" ", 2)[1])
        lowered = head.lower()
        events: list[float] = []
        scan = _EventScanner(events, delays)
        if b"transfer-encoding: chunked" in lowered:
            await self._read_chunked(buffer, now, scan)
        else:
            length = 0
            for line in lowered.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            scan.feed(buffer[:length], now)
            received = len(buffer)
            while received < length:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed mid-body")
                scan.feed(chunk, time.perf_counter())
                received += len(chunk)
        return status, started, events, time.perf_counter()

    async def _read_chunked(self, buffer: bytes, now: float, scan: _EventScanner) -> None:
        assert self.reader is not None
        while True:
            while b"\r\n" not in buffer:
                buffer, now = buffer + await self._more(), time.perf_counter()
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:  # no trailers: the body ends with one more CRLF
                while len(buffer) < 2:
                    buffer += await self._more()
                return
            while len(buffer) < size + 2:
                chunk = await self._more()
                # Bytes of a chunk arrive when they arrive: scan them as they come.
                now = time.perf_counter()
                buffer += chunk
            scan.feed(buffer[:size], now)
            buffer = buffer[size + 2 :]

    async def _more(self) -> bytes:
        assert self.reader is not None
        chunk = await self.reader.read(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        return chunk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _EventScanner:
    """Notes when each server-sent event (ended by a blank line) has fully arrived.

    An event stamped by the paced upstream (``fp_sent_<monotonic ns>``) also yields how
    long it took from the upstream's write to here (one clock: CLOCK_MONOTONIC).
    """

    def __init__(self, events: list[float], delays: list[float] | None = None) -> None:
        self.events = events
        self.delays = delays if delays is not None else []
        self._tail = b""

    def feed(self, data: bytes, at: float) -> None:
        now_ns = time.monotonic_ns()
        parts = (self._tail + data).split(b"\n\n")
        self._tail = parts.pop()
        for event in parts:
            self.events.append(at)
            match = _STAMP.search(event)
            if match:
                self.delays.append((now_ns - int(match.group(1))) / 1e6)


_STAMP = re.compile(rb"fp_sent_(\d+)")


async def _stream(
    url: str, token: str | None, body: bytes, count: int, warmup: int
) -> dict[str, Any]:
    connection = _Connection(url, token)
    await connection.open()
    first_event_ms: list[float] = []
    gaps_ms: list[float] = []
    totals_ms: list[float] = []
    statuses: dict[int, int] = {}
    relay_ms: list[float] = []  # stamped events: upstream write to arrival here
    try:
        for i in range(warmup + count):
            delays: list[float] = []
            status, started, events, ended = await connection.exchange(body, delays)
            if i < warmup:
                continue
            relay_ms += delays
            statuses[status] = statuses.get(status, 0) + 1
            if events:
                first_event_ms.append((events[0] - started) * 1000)
                gaps_ms += [(b - a) * 1000 for a, b in itertools.pairwise(events)]
            totals_ms.append((ended - started) * 1000)
    finally:
        connection.close()
    return {
        "streams": count,
        "statuses": statuses,
        "events_per_stream": len(gaps_ms) / count + 1 if count else 0,
        "first_event_ms": percentiles(first_event_ms),
        "gap_ms": percentiles(gaps_ms),
        "total_ms": percentiles(totals_ms),
        "delivery_ms": percentiles(relay_ms),
    }


def big_prompt_body(model: str, tokens: int) -> bytes:
    """A chat body whose user message is about ``tokens`` tokens of ordinary words."""
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "they",
        "you",
        "were",
        "her",
        "she",
        "there",
        "been",
        "one",
        "all",
        "we",
        "their",
        "has",
        "would",
        "when",
        "if",
        "so",
        "no",
        "what",
        "up",
        "out",
        "who",
        "them",
        "some",
        "could",
        "more",
        "into",
        "time",
        "only",
        "new",
        "about",
        "other",
        "cost",
        "ledger",
        "budget",
        "request",
        "token",
        "model",
        "price",
        "team",
        "key",
        "stream",
        "usage",
        "entry",
        "gateway",
    ]
    rng = random.Random(42)
    text = " ".join(rng.choice(words) for _ in range(tokens))
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


async def _big_prompts(
    url: str, token: str | None, model: str, tokens: int, seconds: float
) -> dict[str, Any]:
    body = big_prompt_body(model, tokens)
    connection = _Connection(url, token)
    await connection.open()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            status, started, _, ended = await connection.exchange(body)
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append((ended - started) * 1000)
    finally:
        connection.close()
    return {
        "body_bytes": len(body),
        "requests": len(latencies),
        "statuses": statuses,
        "latency_ms": percentiles(latencies),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {
            "n": 0,
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
        }
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stream = commands.add_parser("stream", help="sequential streams: first event and gaps")
    stream.add_argument("--url", required=True)
    stream.add_argument("--token")
    stream.add_argument("--body", required=True, help="file with the JSON body")
    stream.add_argument("--count", type=int, default=200)
    stream.add_argument("--warmup", type=int, default=20)
    big = commands.add_parser("bigprompt", help="send a huge prompt again and again")
    big.add_argument("--url", required=True)
    big.add_argument("--token")
    big.add_argument("--model", default="gpt-4.1-mini")
    big.add_argument("--tokens", type=int, default=1_000_000)
    big.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.command == "stream":
        body = Path(args.body).read_bytes()
        result = runner(_stream(args.url, args.token, body, args.count, args.warmup))
    else:
        result = runner(_big_prompts(args.url, args.token, args.model, args.tokens, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
