"""A quick A/B of throughput at one concurrency: the bare pass-through against Ledger.

Where ``run.py`` measures every target (about ten minutes), this measures one thing in
a minute or two, to try a change: requests/s at ``--connections`` for the pass-through
and for ``ledger serve`` on SQLite and/or PostgreSQL, rounds interleaved, and the CPU
each server thread spent per request (user + system, from ``/proc/PID/task``). On one
event loop the loop thread is what saturates first, so its CPU per request is the
figure a change must move.

    python bench/ab.py                                   # SQLite and PostgreSQL, 20 connections
    python bench/ab.py --databases sqlite --rounds 3 --seconds 10
    python bench/ab.py --py-spy /tmp/prof                # + py-spy --gil in the last round
    python bench/ab.py --databases sqlite --connections 1 \
        --variant wp=LEDGER_WRITER_PROCESS=true          # + a Ledger with other settings
    python bench/ab.py --scenario responses --streams 100   # POST /v1/responses, and the
                                                         # first event of streamed ones

``--scenario`` picks the endpoint (``chat``: ``/v1/chat/completions``; ``responses``:
``/v1/responses``; ``embeddings``: ``/v1/embeddings``, not streamed). ``--streams N`` then
times N sequential streamed requests of the scenario per server (``load.py stream``):
the first event's and the whole stream's latency, client-side.

Ledger is started (with ``python -P``) from whichever ``ledger`` package Python imports
from its path, so ``PYTHONPATH=<worktree>`` measures that git worktree, whatever the
working directory; environment variables reach the
servers unchanged. Needs what ``run.py`` needs (wrk, nginx-light, PostgreSQL at
``--postgres`` for that database); ``--py-spy`` needs ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from load import run_python_client, run_wrk  # noqa: E402
from run import (  # noqa: E402  (the body run.py measures, numbered per request)
    SMALL_PROMPT,
    fresh_postgres,
)
from servers import (  # noqa: E402
    JSON_MODEL,
    SSE_MODEL,
    LedgerServer,
    PassthroughServer,
    Server,
    cpu_seconds,
    free_port,
    read_stat,
)
from upstream import NginxUpstream  # noqa: E402

# Each scenario: its path (after /v1, both at Ledger and at the pass-through's /json or
# /sse prefix) and its body, non-streamed and streamed (None: the endpoint has no stream).
SCENARIOS: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {
    "chat": (
        "/chat/completions",
        {"model": JSON_MODEL, "messages": SMALL_PROMPT},
        {"model": SSE_MODEL, "messages": SMALL_PROMPT, "stream": True},
    ),
    "responses": (
        "/responses",
        {"model": JSON_MODEL, "input": SMALL_PROMPT[-1]["content"]},
        {"model": SSE_MODEL, "input": SMALL_PROMPT[-1]["content"], "stream": True},
    ),
    "embeddings": (
        "/embeddings",
        {"model": JSON_MODEL, "input": SMALL_PROMPT[-1]["content"]},
        None,
    ),
}


@dataclass
class Contender:
    name: str
    url: str
    server: Server
    token: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    stream_url: str | None = None
    streams: dict[str, Any] | None = None


def thread_ticks(pid: int) -> dict[str, tuple[str, int, int]]:
    """Each thread of ``pid``: its name, user and system clock ticks so far."""
    threads: dict[str, tuple[str, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[task.name] = read_stat(task / "stat")
        except OSError:
            continue
    return threads


def per_thread_us(
    before: dict[str, tuple[str, int, int]],
    after: dict[str, tuple[str, int, int]],
    requests: int,
) -> list[dict[str, Any]]:
    """CPU per request of each thread that used any, busiest first."""
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    rows = []
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0, 0))
        if user + system - user0 - system0 <= 0:
            continue
        rows.append(
            {
                "thread": f"{name}/{tid}",
                "user_us": (user - user0) * tick_us / max(1, requests),
                "system_us": (system - system0) * tick_us / max(1, requests),
            }
        )
    return sorted(rows, key=lambda row: -(row["user_us"] + row["system_us"]))


def measure(
    contender: Contender, body: Path, args: argparse.Namespace, spy_to: str | None
) -> dict[str, Any]:
    pid = contender.server.pid
    spy = None
    if spy_to:
        spy = subprocess.Popen(
            [
                "py-spy", "record", "--gil", "--nonblocking", "-r", "997", "-f", "raw",
                "-o", f"{spy_to}-{contender.name}.txt", "-p", str(pid),
                "-d", str(max(1, round(args.seconds))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    threads = thread_ticks(pid)
    cpu = cpu_seconds(pid)
    figures = run_wrk(
        contender.url,
        body,
        connections=args.connections,
        seconds=args.seconds,
        token=contender.token,
        cpus=args.load_cpus,
    )
    if spy is not None:
        spy.wait()
    requests = figures["requests"]
    return {
        "rps": figures["rps"],
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "errors": figures["errors"] + figures.get("non_200", 0),
        "cpu_us_per_request": (cpu_seconds(pid) - cpu) * 1e6 / max(1, requests),
        "threads": per_thread_us(threads, thread_ticks(pid), requests),
    }


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``wp=LEDGER_WRITER_PROCESS=true,LEDGER_X=1`` -> ("-wp", {...})."""
    name, _, assignments = text.partition("=")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        variable, _, value = assignment.partition("=")
        env[variable] = value
    return f"-{name}", env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--load-cpus", default=str((os.cpu_count() or 1) - 1))
    parser.add_argument("--py-spy", metavar="PREFIX", help="py-spy --gil raw profiles")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="chat")
    parser.add_argument("--streams", type=int, default=0, help="streamed requests to time")
    parser.add_argument(
        "--lean-passthrough",
        action="store_true",
        help="also a pass-through on Ledger's own provider transport (the ratio stays "
        "against the aiohttp pass-through, the baseline the targets name)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VAR=VALUE[,VAR=VALUE]",
        help="one more Ledger per database, with these environment variables (repeatable)",
    )
    args = parser.parse_args()
    path, plain, streamed = SCENARIOS[args.scenario]
    if args.streams and streamed is None:
        parser.error(f"the {args.scenario} scenario has no stream to time")

    work = Path(tempfile.mkdtemp(prefix="ledger-ab-"))
    body = work / "body.json"
    body.write_text(json.dumps(plain), encoding="utf-8")
    stream_body = work / "stream.json"
    stream_body.write_text(json.dumps(streamed), encoding="utf-8")
    upstream = NginxUpstream(free_port(), cpus=args.load_cpus).start()
    contenders: list[Contender] = []
    try:
        passthrough = PassthroughServer(work, upstream.url).start()
        contenders.append(
            Contender(
                "passthrough", f"{passthrough.url}/json/v1{path}", passthrough,
                stream_url=f"{passthrough.url}/sse/v1{path}",
            )
        )  # fmt: skip
        if args.lean_passthrough:
            lean = PassthroughServer(work, upstream.url, client="ledger").start()
            contenders.append(
                Contender(
                    lean.name, f"{lean.url}/json/v1{path}", lean,
                    stream_url=f"{lean.url}/sse/v1{path}",
                )
            )  # fmt: skip
        variants = [("", {})] + [parse_variant(text) for text in args.variant]
        for database in args.databases.split(","):
            for suffix, env in variants:
                name = f"ledger-{database}{suffix}"
                if database == "sqlite":
                    url = f"sqlite+aiosqlite:///{work}/{name}.db"
                else:
                    url = fresh_postgres(args.postgres, name.replace("-", "_"))
                ledger = LedgerServer(work, url, upstream.url, label=name, extra_env=env).start()
                contenders.append(
                    Contender(
                        name,
                        f"{ledger.url}/v1{path}",
                        ledger,
                        token=ledger.create_tenant(f"ab-{name}").key,
                        stream_url=f"{ledger.url}/v1{path}",
                    )
                )
        for contender in contenders:  # warm-up: connections, encodings, budget leases
            run_wrk(contender.url, body, connections=args.connections, seconds=2,
                    token=contender.token, cpus=args.load_cpus)  # fmt: skip
        for round_ in range(args.rounds):
            spy_to = args.py_spy if round_ == args.rounds - 1 else None
            for contender in contenders:
                run = measure(contender, body, args, spy_to)
                contender.runs.append(run)
                threads = ", ".join(
                    f"{t['thread']} {t['user_us']:.0f}+{t['system_us']:.0f}"
                    for t in run["threads"][:3]
                )
                print(
                    f"round {round_ + 1} {contender.name:16s} {run['rps']:7.0f} req/s "
                    f"p50 {run['p50_ms']:6.2f} p99 {run['p99_ms']:6.2f} ms  CPU {run['cpu_us_per_request']:4.0f} µs/req "
                    f"(threads, user+system µs/req: {threads})  errors {run['errors']}",
                    flush=True,
                )
        for contender in contenders if args.streams else []:
            token = ["--token", contender.token] if contender.token else []
            contender.streams = run_python_client(
                ["stream", "--url", contender.stream_url or "", "--body", str(stream_body),
                 "--count", str(args.streams), *token],
                cpus=args.load_cpus, timeout=600,
            )  # fmt: skip
    finally:
        for contender in reversed(contenders):
            contender.server.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = sum(run["rps"] for run in contenders[0].runs) / len(contenders[0].runs)
    print(
        f"\n{'':20s} {'req/s':>8s} {'ratio':>6s} {'CPU µs/req':>11s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    summary = {}
    for contender in contenders:
        runs = contender.runs
        rps = sum(run["rps"] for run in runs) / len(runs)
        cpu = sum(run["cpu_us_per_request"] for run in runs) / len(runs)
        p50 = statistics.median(run["p50_ms"] for run in runs)
        p99 = statistics.median(run["p99_ms"] for run in runs)
        summary[contender.name] = {
            "rps": rps, "ratio": rps / base, "runs": runs, "streams": contender.streams,
        }  # fmt: skip
        print(
            f"{contender.name:20s} {rps:8.0f} {rps / base:6.3f} {cpu:11.0f} {p50:7.2f} {p99:7.2f}"
        )
    for contender in contenders if args.streams else []:
        streams = contender.streams or {}
        first, total = streams.get("first_event_ms", {}), streams.get("total_ms", {})
        print(
            f"{contender.name:20s} streamed: first event p50 {first.get('p50', 0):.2f} "
            f"p99 {first.get('p99', 0):.2f} ms, whole stream p50 {total.get('p50', 0):.2f} ms, "
            f"statuses {streams.get('statuses')}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
