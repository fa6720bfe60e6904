"""A fast static upstream for the benchmarks: nginx answering fixed OpenAI and Anthropic replies.

nginx (Debian's ``nginx-light``, one worker) answers every POST from memory with
``return 200 '…'`` (the echo module, shipped with ``nginx-light``, writes the streams,
whose text is longer than one nginx string may be), so the upstream costs a few
microseconds per request and is never what the benchmark measures.

Locations (the same paths under each prefix, so a base URL picks the behaviour):

- ``/json/v1/chat/completions``    a ``chat.completion`` with a realistic ``usage``
- ``/sse/v1/chat/completions``     a whole ``chat.completion.chunk`` stream at once
- ``/paced/v1/chat/completions``   the same stream, one event every ``PACE_MS``, each
  stamped with the monotonic time it was sent (proxied to a small asyncio server, see
  ``serve_paced``), so a client can tell exactly how long the relay held each event
- ``/json/v1/messages``            an Anthropic ``message`` with ``usage``
- ``/sse/v1/messages``             an Anthropic event stream at once
- ``/json/v1/messages/count_tokens``
- ``/json/v1/responses``           an OpenAI Responses ``response`` with ``usage``
- ``/json/v1/embeddings``          an embeddings ``list`` with ``usage``
- ``/sse/v1/responses``            a whole Responses event stream at once (``response.created``
  … ``response.completed`` with its usage)

Run it alone with ``python bench/upstream.py --port 9100`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
PACE_MS = 10
CONTENT_WORDS = [
    "Ledger",
    "forwards",
    "every",
    "request",
    "to",
    "the",
    "provider",
    "and",
    "writes",
    "one",
    "entry",
    "per",
    "request",
    "into",
    "the",
    "ledger",
    "with",
    "the",
    "tokens,",
    "the",
    "exact",
    "cost",
    "and",
    "the",
    "latency,",
    "so",
    "a",
    "team",
    "always",
    "knows",
    "what",
    "its",
    "models",
    "cost",
    "and",
    "a",
    "hard",
    "budget",
    "can",
    "refuse",
    "a",
    "request",
    "before",
    "any",
    "money",
    "is",
    "spent.",
]
PROMPT_TOKENS = 27
COMPLETION_TOKENS = 58
CREATED = 1_764_000_000


def chat_completion() -> bytes:
    """The fixed non-streaming OpenAI reply."""
    body = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gpt-4.1-mini-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": " ".join(CONTENT_WORDS),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench0000",
    }
    return _compact(body)


def chat_stream_events() -> list[bytes]:
    """The OpenAI stream as sent with ``include_usage``: deltas, finish, usage, ``[DONE]``."""

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        return {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": "gpt-4.1-mini-2025-04-14",
            "service_tier": "default",
            "system_fingerprint": "fp_bench0000",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [
        chunk({"content": " " + word if i else word}, None)
        for i, word in enumerate(CONTENT_WORDS[:20])
    ]
    events.append(chunk({}, "stop"))
    usage = json.loads(chat_completion())["usage"]
    events.append({**chunk({}, None), "choices": [], "usage": usage})
    return [b"data: " + _compact(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


def embeddings_response() -> bytes:
    """The fixed embeddings reply: one 256-dimension vector and its prompt tokens."""
    vector = [round(0.001 * (i % 97), 3) for i in range(256)]
    return _compact(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "bench-embedding",
            "usage": {"prompt_tokens": 12, "total_tokens": 12},
        }
    )


def responses_response() -> bytes:
    """The fixed non-streaming Responses reply (same text and token counts as the chat one)."""
    return _compact(_responses_object("completed"))


def _responses_object(status: str) -> dict[str, object]:
    done = status == "completed"
    message = {
        "type": "message", "id": "msg_bench0000", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": " ".join(CONTENT_WORDS), "annotations": []}],
    }  # fmt: skip
    return {
        "id": "resp_bench0000000000000000", "object": "response", "created_at": CREATED,
        "status": status, "model": "gpt-4.1-mini-2025-04-14", "error": None,
        "output": [message] if done else [],
        "usage": {
            "input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        } if done else None,
    }  # fmt: skip


def responses_stream_events() -> list[bytes]:
    """A Responses stream: created, in_progress, 20 text deltas, done events, completed."""
    opening = _responses_object("in_progress")
    final = _responses_object("completed")
    where = {"item_id": "msg_bench0000", "output_index": 0, "content_index": 0}
    events: list[dict[str, object]] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
    ]
    events += [
        {"type": "response.output_text.delta", **where, "delta": " " + word if i else word}
        for i, word in enumerate(CONTENT_WORDS[:20])
    ]
    events.append({"type": "response.output_text.done", **where, "text": " ".join(CONTENT_WORDS)})
    events.append({"type": "response.completed", "response": final})
    return [
        f"event: {event['type']}\n".encode()
        + b"data: "
        + _compact({**event, "sequence_number": n})
        + b"\n\n"
        for n, event in enumerate(events)
    ]


def anthropic_message() -> bytes:
    """The fixed non-streaming Anthropic reply."""
    return _compact(
        {
            "id": "msg_bench000000000000000000",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": " ".join(CONTENT_WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": PROMPT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": COMPLETION_TOKENS,
                "service_tier": "standard",
            },
        }
    )


def anthropic_stream_events() -> list[bytes]:
    """An Anthropic Messages event stream with input usage first and output usage last."""
    message = json.loads(anthropic_message())
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[tuple[str, dict[str, object]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for i, word in enumerate(CONTENT_WORDS[:20]):
        delta = {"type": "text_delta", "text": " " + word if i else word}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": COMPLETION_TOKENS},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [
        f"event: {name}\n".encode() + b"data: " + _compact(data) + b"\n\n" for name, data in events
    ]


def _wait_for_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _quoted(text: bytes) -> str:
    """``text`` as an nginx single-quoted string (nginx turns \\n back into a newline)."""
    value = text.decode()
    for char, escaped in (("\\", "\\\\"), ("'", "\\'"), ("\n", "\\n")):
        value = value.replace(char, escaped)
    if "$" in value:
        raise ValueError("nginx would expand '$' in a return text")
    return f"'{value}'"


def _echo(events: list[bytes], *, pace_ms: int = 0) -> str:
    """echo-module directives writing ``events`` (nginx limits one string to 4 KiB).

    Unpaced, the events go out together when the handler ends; paced, each one is
    flushed and followed by a sleep.
    """
    lines = []
    for i, event in enumerate(events):
        line = f"            echo -n {_quoted(event)};"
        if pace_ms:
            line += " echo_flush;"
            if i < len(events) - 1:
                line += f" echo_sleep {pace_ms / 1000:.3f};"
        lines.append(line)
    return "\n".join(lines)


def nginx_config(port: int, root: Path, paced_port: int) -> str:
    """The whole nginx.conf: one worker, keep-alive forever, every answer from memory."""
    chat_sse = _echo(chat_stream_events())
    anthropic_sse = _echo(anthropic_stream_events())
    responses_sse = _echo(responses_stream_events())
    count = _compact({"input_tokens": PROMPT_TOKENS})
    return f"""
load_module {ECHO_MODULE};
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    upstream paced {{ server 127.0.0.1:{paced_port}; keepalive 64; }}
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_max_body_size 256m;
    client_body_buffer_size 1m;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server_tokens off;
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 {_quoted(chat_completion())};
        }}
        location = /sse/v1/chat/completions {{
            default_type text/event-stream;
{chat_sse}
        }}
        location /paced/ {{
            proxy_pass http://paced/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
        location = /json/v1/messages {{
            default_type application/json;
            return 200 {_quoted(anthropic_message())};
        }}
        location = /sse/v1/messages {{
            default_type text/event-stream;
{anthropic_sse}
        }}
        location = /json/v1/messages/count_tokens {{
            default_type application/json;
            return 200 {_quoted(count)};
        }}
        location = /json/v1/embeddings {{
            default_type application/json;
            return 200 {_quoted(embeddings_response())};
        }}
        location = /json/v1/responses {{
            default_type application/json;
            return 200 {_quoted(responses_response())};
        }}
        location = /sse/v1/responses {{
            default_type text/event-stream;
{responses_sse}
        }}
        location = /healthz {{ return 200 'ok'; }}
    }}
}}
"""


STAMP = "fp_sent_"  # the paced stream's system_fingerprint: "fp_sent_<monotonic ns>"


def paced_events() -> list[bytes]:
    """The chat stream with a placeholder where each event's send time goes."""
    return [event.replace(b"fp_bench0000", b"fp_sent_%d") for event in chat_stream_events()]


async def serve_paced(port: int, pace_ms: int = PACE_MS) -> None:
    """A keep-alive HTTP/1.1 server that answers any POST with the paced, stamped stream."""
    import asyncio

    events = paced_events()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                )
                for i, template in enumerate(events):
                    if i:
                        await asyncio.sleep(pace_ms / 1000)
                    event = template % time.monotonic_ns() if b"%d" in template else template
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


class NginxUpstream:
    """nginx on 127.0.0.1:``port`` with the fixed replies, in a temporary directory."""

    def __init__(self, port: int, *, cpus: str | None = None) -> None:
        self.port = port
        self.paced_port = _free_port()
        self._paced: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self._cpus = cpus
        self._root = Path(tempfile.mkdtemp(prefix="ledger-bench-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> NginxUpstream:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists() or not ECHO_MODULE.exists():
            raise RuntimeError(
                "nginx with the echo module is needed: apt-get install -y nginx-light"
            )
        config = self._root / "nginx.conf"
        config.write_text(nginx_config(self.port, self._root, self.paced_port), encoding="utf-8")
        paced = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--paced-only",
            "--port",
            str(self.paced_port),
        ]
        if self._cpus:
            paced = ["taskset", "-c", self._cpus, *paced]
        self._paced = subprocess.Popen(paced)
        _wait_for_port(self.paced_port, timeout)
        command = [
            nginx,
            "-c",
            str(config),
            "-p",
            str(self._root),
            "-e",
            str(self._root / "error.log"),
        ]
        if self._cpus:
            command = ["taskset", "-c", self._cpus, *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited: {error}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self._paced is not None and self._paced.poll() is None:
            self._paced.terminate()
            self._paced.wait(timeout=10)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> NginxUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--print-config", action="store_true", help="print nginx.conf and exit")
    parser.add_argument(
        "--paced-only", action="store_true", help="run only the paced stream server"
    )
    args = parser.parse_args()
    if args.print_config:
        print(
            nginx_config(
                args.port, Path(tempfile.gettempdir()) / "ledger-bench-nginx", args.port + 1
            )
        )
        return
    if args.paced_only:
        try:
            import uvloop

            uvloop.run(serve_paced(args.port))
        except ImportError:
            import asyncio

            asyncio.run(serve_paced(args.port))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with NginxUpstream(args.port) as upstream:
        print(f"upstream on {upstream.url} (Ctrl-C stops it)", flush=True)
        try:
            assert upstream.process is not None
            upstream.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
