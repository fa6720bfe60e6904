"""Ledger's gateway benchmark: one command, every target, one table.

    python bench/run.py --quick          # about 10 minutes (1 round of 5 s a point, 60 s soak)
    python bench/run.py                  # about 40 minutes (3 rounds of 10 s, 10-minute soak)
    python bench/run.py --from-results bench/results/latest.json   # reprint table and plot

It starts a static upstream (nginx), the bare pass-through baseline, Ledger on SQLite (a
temporary directory) and on PostgreSQL (a dedicated database it creates), and LiteLLM
when a LiteLLM virtual environment is given; measures each target with the baseline in
the same run; checks that every request was recorded; and prints the table
``target | Ledger | baseline | ratio | pass/fail``. Figures go to
``bench/results/latest.json`` and the latency plot to ``bench/latency.png``.

Needs: ``apt-get install -y wrk nginx-light``, PostgreSQL reachable at ``--postgres``
(or ``--no-postgres``), and ``pip install -e '.[bench]'`` (matplotlib) for the plot.
The method and the latest figures are in BENCHMARKS.md ("Gateway performance").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import run_python_client, run_wrk
from servers import (
    ANTHROPIC_MODEL,
    JSON_MODEL,
    PACED_MODEL,
    SSE_MODEL,
    LedgerServer,
    LiteLLMServer,
    PassthroughServer,
    Server,
    cpu_seconds,
    free_port,
    ledger_has_workers_option,
    rss_bytes,
)
from upstream import PACE_MS, NginxUpstream

BENCH_DIR = Path(__file__).resolve().parent
CONCURRENCY = (1, 5, 10, 20, 40)
RULES_SETTLE_S = 7.0  # BudgetGuard reloads budget rules every 5 s in each process
# Servers together using less CPU than this per half second (10 % of a CPU) are idle.
IDLE_CPU_S_PER_HALF_SECOND = 0.05
DEFAULT_LITELLM = "/opt/litellm-venv/bin/python"
SMALL_PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    # wrk puts the request's number in place of %%N%%: every user prompt is new.
    {
        "role": "user",
        "content": "Request %%N%%: one sentence on what a cost-accounting gateway does.",
    },
]


@dataclass
class Row:
    target: str
    ledger: str
    baseline: str = "—"
    ratio: str = "—"
    verdict: str = "info"
    litellm: str = "—"


@dataclass
class Endpoint:
    """One thing the load is aimed at: where, with which key, and how to count its ledger."""

    name: str
    url: str  # non-streaming JSON chat completions
    sse_url: str
    paced_url: str
    token: str | None = None
    ledger: LedgerServer | None = None
    server: Server | None = None
    bodies: dict[str, Path] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.rounds = args.rounds or (1 if self.quick else 3)
        self.seconds = args.seconds or (5 if self.quick else 10)
        self.load_cpus = args.load_cpus or str((os.cpu_count() or 1) - 1)
        self.work = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
        self.results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat()}
        self.rows: list[Row] = []
        self.servers: list[Server] = []
        self.upstream: NginxUpstream | None = None
        self.endpoints: dict[str, Endpoint] = {}

    # -- set-up ---------------------------------------------------------------------------

    def body(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.work / f"body-{name}.json"
        path.write_text(json.dumps(payload), encoding="utf-8")
        return path

    def start(self) -> None:
        self.results["machine"] = machine()
        _progress(
            f"{self.results['machine']['cpus']} CPUs; a CPU-bound loop runs "
            f"{self.results['machine']['parallel_cpu_slowdown']}x slower beside another "
            "(1.0: two real cores)"
        )
        self.results["command"] = " ".join(["python", "bench/run.py", *sys.argv[1:]])
        self.results["rounds"] = self.rounds
        self.results["seconds_per_point"] = self.seconds
        self.upstream = NginxUpstream(free_port(), cpus=self.load_cpus).start()
        up = self.upstream.url
        bodies = {
            "json": self.body("json", {"model": JSON_MODEL, "messages": SMALL_PROMPT}),
            "sse": self.body("sse", {"model": SSE_MODEL, "messages": SMALL_PROMPT, "stream": True}),
            "paced": self.body(
                "paced", {"model": PACED_MODEL, "messages": SMALL_PROMPT, "stream": True}
            ),
        }
        self.endpoints["upstream"] = Endpoint(
            "upstream",
            f"{up}/json/v1/chat/completions",
            f"{up}/sse/v1/chat/completions",
            f"{up}/paced/v1/chat/completions",
            bodies=bodies,
        )
        passthrough = self._start(PassthroughServer(self.work, up))
        self.endpoints["passthrough"] = Endpoint(
            "passthrough",
            f"{passthrough.url}/json/v1/chat/completions",
            f"{passthrough.url}/sse/v1/chat/completions",
            f"{passthrough.url}/paced/v1/chat/completions",
            server=passthrough,
            bodies=bodies,
        )
        databases = [("ledger-sqlite", f"sqlite+aiosqlite:///{self.work}/ledger.db")]
        if not self.args.no_postgres:
            databases.append(("ledger-postgres", self._fresh_postgres("ledger_bench")))
        for label, url in databases:
            ledger = self._start(LedgerServer(self.work, url, up, label=label))
            tenant = ledger.create_tenant(f"bench-{label}")
            self.endpoints[label] = Endpoint(
                label,
                f"{ledger.url}/v1/chat/completions",
                f"{ledger.url}/v1/chat/completions",
                f"{ledger.url}/v1/chat/completions",
                token=tenant.key,
                ledger=ledger,
                server=ledger,
                bodies=bodies,
            )
        litellm_python = self.args.litellm_python
        if litellm_python and Path(litellm_python).exists():
            try:
                litellm = self._start(LiteLLMServer(self.work, up, litellm_python))
            except RuntimeError as error:
                print(f"LiteLLM not measured: {error}", file=sys.stderr)
            else:
                self.endpoints["litellm"] = Endpoint(
                    "litellm",
                    f"{litellm.url}/v1/chat/completions",
                    f"{litellm.url}/v1/chat/completions",
                    f"{litellm.url}/v1/chat/completions",
                    token="sk-anything",  # noqa: S106 - LiteLLM runs without keys
                    server=litellm,
                    bodies=bodies,
                )

    def _start(self, server: Any) -> Any:
        self.servers.append(server)
        server.start()
        return server

    def _fresh_postgres(self, name: str) -> str:
        return fresh_postgres(self.args.postgres, name)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.upstream is not None:
            self.upstream.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- measurements ---------------------------------------------------------------------

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every server under test is idle, so none measures another's leftovers.

        A server can go on working after its load stops (LiteLLM's background logging and
        spend tracking after 40 connections, a writer process's last batches); measured
        meanwhile, the next server's figures would carry that CPU.
        """
        pids = [
            server.pid
            for server in self.servers
            if server.process is not None and server.process.poll() is None
        ]
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = sum(cpu_seconds(pid) for pid in pids)
            time.sleep(0.5)
            if sum(cpu_seconds(pid) for pid in pids) - before < IDLE_CPU_S_PER_HALF_SECOND:
                break
        waited = time.monotonic() - started
        if waited > 2:
            _progress(f"waited {waited:.1f} s for the servers to go idle")

    def wrk(
        self,
        endpoint: Endpoint,
        connections: int,
        seconds: float,
        body: str = "json",
        *,
        settle: bool = True,
    ) -> dict[str, Any]:
        if settle:
            self.settle()
        before = ledger_count(endpoint.ledger) if endpoint.ledger else None
        pid = endpoint.server.pid if endpoint.server is not None else None
        cpu_before = cpu_seconds(pid) if pid else 0.0
        figures = run_wrk(
            endpoint.url,
            endpoint.bodies[body],
            connections=connections,
            seconds=seconds,
            token=endpoint.token,
            cpus=self.load_cpus,
        )
        if pid:
            used = cpu_seconds(pid) - cpu_before
            figures["cpu_us_per_request"] = used / max(1, figures["requests"]) * 1e6
        if endpoint.ledger is not None and before is not None:
            figures["recorded"] = settled_count(
                endpoint.ledger, before, figures["requests"], figures["sent"]
            )
        return figures

    def sweep(self) -> None:
        """Latency and throughput at each concurrency, every endpoint, rounds interleaved."""
        names = list(self.endpoints)
        for endpoint in self.endpoints.values():  # warm-up: connections, encodings, leases
            self.wrk(endpoint, 20, 2)
        raw: dict[str, dict[int, list[dict[str, Any]]]] = {
            n: {c: [] for c in CONCURRENCY} for n in names
        }
        for round_number in range(self.rounds):
            for connections in CONCURRENCY:
                for name in names:
                    figures = self.wrk(self.endpoints[name], connections, self.seconds)
                    raw[name][connections].append(figures)
                    _progress(
                        f"round {round_number + 1} c={connections:<3} {name:<16} "
                        f"{figures['rps']:8.0f} req/s  p50 {figures['p50_us'] / 1000:7.2f} ms  "
                        f"p99 {figures['p99_us'] / 1000:7.2f} ms"
                        + (
                            f"  recorded {figures['recorded']}/{figures['sent']}"
                            if "recorded" in figures
                            else ""
                        )
                    )
        sweep: dict[str, dict[str, dict[str, float]]] = {}
        for name in names:
            sweep[name] = {}
            for connections in CONCURRENCY:
                runs = raw[name][connections]
                sweep[name][str(connections)] = {
                    "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    "p999_ms": statistics.median(r["p999_us"] for r in runs) / 1000,
                    "rps": statistics.median(r["rps"] for r in runs),
                    "errors": sum(r["errors"] + r["non_200"] for r in runs),
                    "sent": sum(r["sent"] for r in runs),
                    "completed": sum(r["requests"] for r in runs),
                    "recorded": sum(r.get("recorded", 0) for r in runs),
                    "cpu_us_per_request": statistics.median(
                        r.get("cpu_us_per_request", 0.0) for r in runs
                    ),
                }
        self.results["sweep"] = sweep
        self.results["sweep_raw"] = {n: {str(c): v for c, v in d.items()} for n, d in raw.items()}

    def streaming(self) -> None:
        count = 100 if self.quick else 300
        paced = 20 if self.quick else 60
        out: dict[str, Any] = {}
        for name, endpoint in self.endpoints.items():
            self.settle()
            out[name] = {
                "static": run_python_client(
                    [
                        "stream",
                        "--url",
                        endpoint.sse_url,
                        "--body",
                        str(endpoint.bodies["sse"]),
                        "--count",
                        str(count),
                        *(["--token", endpoint.token] if endpoint.token else []),
                    ],
                    cpus=self.load_cpus,
                    timeout=600,
                ),
                "paced": run_python_client(
                    [
                        "stream",
                        "--url",
                        endpoint.paced_url,
                        "--body",
                        str(endpoint.bodies["paced"]),
                        "--count",
                        str(paced),
                        "--warmup",
                        "2",
                        *(["--token", endpoint.token] if endpoint.token else []),
                    ],
                    cpus=self.load_cpus,
                    timeout=600,
                ),
            }
            _progress(
                f"stream {name:<16} first event p50 {out[name]['static']['first_event_ms']['p50']:.2f} ms; "
                f"paced: upstream-to-client p50 {out[name]['paced']['delivery_ms']['p50']:.2f} "
                f"p99 {out[name]['paced']['delivery_ms']['p99']:.2f} ms "
                f"({out[name]['paced']['events_per_stream']:.0f} events a stream)"
            )
        self.results["streaming"] = out

    def writer(self) -> None:
        entries = 20_000 if self.quick else 100_000
        out = {}
        targets = [("sqlite", f"sqlite+aiosqlite:///{self.work}/writer.db")]
        if not self.args.no_postgres:
            targets.append(("postgres", self._fresh_postgres("ledger_bench_writer")))
        for name, url in targets:
            for mode, extra in (("", []), (" record() only", ["--record-only"])):
                command = [
                    sys.executable, str(BENCH_DIR / "writer_bench.py"), "--database-url", url,
                    "--entries", str(entries), *extra,
                ]  # fmt: skip
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=1200, check=False
                )
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                if result.returncode != 0 or not lines:
                    raise RuntimeError(f"writer bench failed: {result.stderr[-3000:]}")
                out[name + mode] = json.loads(lines[-1])
                _progress(
                    f"writer {name}{mode}: {out[name + mode]['entries_per_s']:.0f} entries/s, "
                    f"mean batch {out[name + mode]['mean_batch']:.0f}"
                )
                if not extra and url.startswith("postgresql"):
                    url = self._fresh_postgres("ledger_bench_writer")
        self.results["writer"] = out

    def big_prompt(self) -> None:
        endpoint = self.endpoints["ledger-sqlite"]
        seconds = 15 if self.quick else 30
        calm = self.wrk(endpoint, 5, seconds)
        result: dict[str, Any] = {}

        def send() -> None:
            result.update(
                run_python_client(
                    [
                        "bigprompt",
                        "--url",
                        endpoint.url,
                        "--token",
                        endpoint.token or "",
                        "--model",
                        JSON_MODEL,
                        "--tokens",
                        "1000000",
                        "--seconds",
                        str(seconds + 2),
                    ],
                    cpus=self.load_cpus,
                    timeout=seconds + 600,
                )
            )

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(3)  # the sender builds its body and sends the first prompt
        busy = self.wrk(endpoint, 5, seconds, settle=False)  # big prompts are running
        sender.join()
        self.results["big_prompt"] = {"calm": calm, "busy": busy, "big": result}
        _progress(
            f"1M-token prompts: {result.get('requests')} sent ({result.get('statuses')}); small p99 "
            f"{busy['p99_us'] / 1000:.2f} ms vs {calm['p99_us'] / 1000:.2f} ms without"
        )

    def soak(self) -> None:
        endpoint = self.endpoints["ledger-sqlite"]
        assert endpoint.ledger is not None
        seconds = self.args.soak_seconds or (60 if self.quick else 600)
        pid = endpoint.ledger.pid
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - started, rss_bytes(pid)))
                stop.wait(2.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        figures = self.wrk(endpoint, 20, seconds)
        stop.set()
        sampler.join()
        warm = max(10.0, seconds * 0.2)
        after = [rss for t, rss in samples if t >= warm] or [samples[-1][1]]
        self.results["soak"] = {
            "seconds": seconds,
            "warmup_s": warm,
            "requests": figures["requests"],
            "sent": figures["sent"],
            "recorded": figures.get("recorded"),
            "rps": figures["rps"],
            "p99_ms": figures["p99_us"] / 1000,
            "rss_start_mb": samples[0][1] / 2**20,
            "rss_after_warmup_mb": after[0] / 2**20,
            "rss_end_mb": samples[-1][1] / 2**20,
            "rss_max_mb": max(rss for _, rss in samples) / 2**20,
            "growth_after_warmup_mb": (after[-1] - after[0]) / 2**20,
            "samples": [(round(t, 1), rss) for t, rss in samples],
        }
        _progress(
            f"soak {seconds}s: rss {samples[0][1] / 2**20:.0f} -> {samples[-1][1] / 2**20:.0f} MB "
            f"(max {max(r for _, r in samples) / 2**20:.0f} MB)"
        )

    def workers(self) -> None:
        if not ledger_has_workers_option():
            self.results["workers"] = {"available": False}
            return
        out: dict[str, Any] = {"available": True, "runs": {}}
        up = self.upstream.url if self.upstream else ""
        cores = os.cpu_count() or 1
        for workers in sorted({1, 2, cores}):
            url = (
                self._fresh_postgres(f"ledger_bench_w{workers}")
                if not self.args.no_postgres
                else f"sqlite+aiosqlite:///{self.work}/workers-{workers}.db"
            )
            ledger = self._start(
                LedgerServer(self.work, url, up, label=f"ledger-w{workers}", workers=workers)
            )
            # A budget created a moment ago, then one every worker has loaded (rules are
            # reloaded every few seconds per process): exactness is checked for both.
            fresh = ledger.create_tenant(f"bench-w{workers}-fresh")
            fresh_endpoint = Endpoint(
                f"w{workers}-fresh", f"{ledger.url}/v1/chat/completions", "", "",
                token=fresh.key, ledger=ledger, bodies=self.endpoints["passthrough"].bodies,
            )  # fmt: skip
            self.wrk(fresh_endpoint, 40, 2)
            fresh_exact = budget_matches_ledger(ledger)
            tenant = ledger.create_tenant(f"bench-w{workers}")
            time.sleep(RULES_SETTLE_S)
            endpoint = Endpoint(
                f"w{workers}", f"{ledger.url}/v1/chat/completions", "", "", token=tenant.key,
                ledger=ledger, bodies=self.endpoints["passthrough"].bodies,
            )  # fmt: skip
            self.wrk(endpoint, 20, 2)
            figures = self.wrk(endpoint, 40, self.seconds * 2)
            time.sleep(1.5)
            out["runs"][str(workers)] = {
                "rps": figures["rps"],
                "p99_ms": figures["p99_us"] / 1000,
                "sent": figures["sent"],
                "completed": figures["requests"],
                "errors": figures["errors"] + figures["non_200"],
                "recorded": figures.get("recorded"),
                "budget_exact": budget_matches_ledger(ledger),
                "fresh_budget_exact": fresh_exact,
            }
            ledger.stop()
            _progress(f"workers={workers}: {figures['rps']:.0f} req/s")
        self.results["workers"] = out

    def anthropic(self) -> None:
        """Informational: the Anthropic protocol at one connection (Ledger vs direct)."""
        body = self.body(
            "anthropic",
            {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "messages": SMALL_PROMPT[1:]},
        )
        out = {}
        for name in ("upstream", "ledger-sqlite"):
            endpoint = self.endpoints[name]
            url = (
                f"{self.upstream.url}/json/v1/messages"
                if name == "upstream" and self.upstream
                else endpoint.url.replace("/v1/chat/completions", "/v1/messages")
            )
            figures = run_wrk(
                url,
                body,
                connections=1,
                seconds=self.seconds,
                token=endpoint.token,
                cpus=self.load_cpus,
            )
            out[name] = {
                "p50_ms": figures["p50_us"] / 1000,
                "p99_ms": figures["p99_us"] / 1000,
                "errors": figures["errors"] + figures["non_200"],
            }
        self.results["anthropic"] = out

    def integrity(self) -> None:
        """After everything: each Ledger's budget spend equals the sum of its ledger entries."""
        out = {}
        for name, endpoint in self.endpoints.items():
            if endpoint.ledger is not None:
                out[name] = budget_matches_ledger(endpoint.ledger)
        self.results["integrity"] = out

    # -- the table ------------------------------------------------------------------------

    def table(self) -> None:
        r = self.results
        sweep = r["sweep"]
        up1 = sweep["upstream"]["1"]
        base1 = sweep["passthrough"]["1"]
        lite = sweep.get("litellm", {})

        def added(name: str, key: str) -> float:
            return sweep[name]["1"][key] - up1[key]

        def litellm_added(key: str) -> str:
            return f"{lite['1'][key] - up1[key]:.2f} ms" if lite else "—"

        for db, p50_limit, label in (("sqlite", 1.0, "SQLite"), ("postgres", 1.5, "PostgreSQL")):
            name = f"ledger-{db}"
            if name not in sweep:
                continue
            for key, limit in (("p50_ms", p50_limit), ("p99_ms", 2.0 if db == "sqlite" else None)):
                ledger_added = added(name, key)
                base_added = base1[key] - up1[key]
                self.rows.append(
                    Row(
                        f"1. added latency, 1 conn, {label}, {key[:3]}"
                        + (f" (≤ {limit:g} ms)" if limit else " (no target)"),
                        f"{ledger_added:.2f} ms",
                        f"{base_added:.2f} ms",
                        _ratio(ledger_added, base_added),
                        _verdict(ledger_added <= limit) if limit else "info",
                        litellm_added(key),
                    )
                )
        base20 = sweep["passthrough"]["20"]
        for name, label in (("ledger-sqlite", "SQLite"), ("ledger-postgres", "PostgreSQL")):
            if name in sweep and sweep[name]["20"].get("cpu_us_per_request"):
                mine = sweep[name]["20"]["cpu_us_per_request"]
                base = base20.get("cpu_us_per_request", 0.0)
                self.rows.append(
                    Row(
                        f"server CPU per request at 20 conn, {label} (noise-robust; info)",
                        f"{mine:.0f} µs",
                        f"{base:.0f} µs",
                        _ratio(mine, base),
                        "info",
                        f"{lite['20'].get('cpu_us_per_request', 0):.0f} µs" if lite else "—",
                    )
                )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            name = f"ledger-{db}"
            if name not in sweep:
                continue
            at20 = sweep[name]["20"]
            self.rows.append(
                Row(
                    f"2. throughput, 20 conn, {label} (≥ 50% of baseline)",
                    f"{at20['rps']:.0f} req/s",
                    f"{base20['rps']:.0f} req/s",
                    f"{at20['rps'] / base20['rps']:.2f}",
                    _verdict(at20["rps"] >= 0.5 * base20["rps"]),
                    f"{lite['20']['rps']:.0f} req/s" if lite else "—",
                )
            )
            self.rows.append(
                Row(
                    f"2. p99 at 20 conn, {label} (< 25 ms)",
                    f"{at20['p99_ms']:.2f} ms",
                    f"{base20['p99_ms']:.2f} ms",
                    _ratio(at20["p99_ms"], base20["p99_ms"]),
                    _verdict(at20["p99_ms"] < 25),
                    f"{lite['20']['p99_ms']:.2f} ms" if lite else "—",
                )
            )
            runs = r["sweep_raw"][name]
            sent = sum(x["sent"] for c in runs.values() for x in c)
            recorded = sum(x.get("recorded", 0) for c in runs.values() for x in c)
            completed = sum(x["requests"] for c in runs.values() for x in c)
            errors = sum(x["errors"] + x["non_200"] for c in runs.values() for x in c)
            self.rows.append(
                Row(
                    f"2. every request recorded, {label} (all sweep runs)",
                    f"{recorded} entries for {completed} answered + {sent - completed} cut by wrk's stop ({errors} errors)",
                    verdict=_verdict(completed <= recorded <= sent and errors == 0),
                )
            )
        if "streaming" in r:
            s = r["streaming"]
            up_first = s["upstream"]["static"]["first_event_ms"]["p50"]
            lite_s = s.get("litellm")
            for name, label in (("ledger-sqlite", "SQLite"), ("ledger-postgres", "PostgreSQL")):
                if name not in s:
                    continue
                first = s[name]["static"]["first_event_ms"]["p50"] - up_first
                base_first = s["passthrough"]["static"]["first_event_ms"]["p50"] - up_first
                self.rows.append(
                    Row(
                        f"3. stream first event added, p50, {label} (≤ 1 ms)",
                        f"{first:.2f} ms",
                        f"{base_first:.2f} ms",
                        _ratio(first, base_first),
                        _verdict(first <= 1.0),
                        f"{lite_s['static']['first_event_ms']['p50'] - up_first:.2f} ms"
                        if lite_s
                        else "—",
                    )
                )
                up_delivery = s["upstream"]["paced"]["delivery_ms"]
                lag = {
                    q: s[name]["paced"]["delivery_ms"][q] - up_delivery[q] for q in ("p50", "p99")
                }
                base = {
                    q: s["passthrough"]["paced"]["delivery_ms"][q] - up_delivery[q]
                    for q in ("p50", "p99")
                }
                self.rows.append(
                    Row(
                        f"3. relay delay added per event, p99, {PACE_MS} ms-paced stream, {label} (≤ 1 ms)",
                        f"{lag['p99']:.2f} ms (p50 {lag['p50']:.2f})",
                        f"{base['p99']:.2f} ms (p50 {base['p50']:.2f})",
                        _ratio(lag["p99"], base["p99"]),
                        _verdict(lag["p99"] <= 1.0),
                        f"{lite_s['paced']['delivery_ms']['p99'] - up_delivery['p99']:.2f} ms"
                        if lite_s
                        else "—",
                    )
                )
        for name, figures in r.get("writer", {}).items():
            ok = (
                figures["written"] == figures["entries"]
                and figures["budget_spent_nanos"] == figures["expected_spent_nanos"]
            )
            self.rows.append(
                Row(
                    f"4. group commit, {name} (≥ 10,000 entries/s committed)"
                    + ("" if "record()" in name else ", with the request's journal + budget work"),
                    f"{figures['entries_per_s']:,.0f}/s committed (batch "
                    f"{figures['mean_batch']:.0f}; acknowledged once journaled, ack p99 "
                    f"{figures['ack_p99_ms']:.1f} ms)",
                    verdict=_verdict(figures["entries_per_s"] >= 10_000 and ok),
                    ratio="exact" if ok else "MISMATCH",
                )
            )
        if "big_prompt" in r:
            b = r["big_prompt"]
            busy, calm = b["busy"]["p99_us"] / 1000, b["calm"]["p99_us"] / 1000
            big = b["big"]
            self.rows.append(
                Row(
                    "5. small-request p99 (5 conn) with 1M-token prompts in flight (< 10 ms)",
                    f"{busy:.2f} ms ({big.get('requests', 0)} big prompts, p50 {big.get('latency_ms', {}).get('p50', 0):.0f} ms each)",
                    f"{calm:.2f} ms (no big prompt)",
                    _ratio(busy, calm),
                    _verdict(busy < 10 and set(big.get("statuses", {})) == {"200"}),
                )
            )
        if "soak" in r:
            k = r["soak"]
            growth_ok = k["growth_after_warmup_mb"] <= max(5.0, 0.05 * k["rss_after_warmup_mb"])
            self.rows.append(
                Row(
                    f"6. RSS during {k['seconds']} s soak at 20 conn (plateau, < 300 MB)",
                    f"{k['rss_start_mb']:.0f} → {k['rss_end_mb']:.0f} MB (max {k['rss_max_mb']:.0f}; "
                    f"+{k['growth_after_warmup_mb']:.1f} MB after {k['warmup_s']:.0f} s warm-up)",
                    verdict=_verdict(growth_ok and k["rss_max_mb"] < 300),
                )
            )
            self.rows.append(
                Row(
                    "6. soak: every request recorded",
                    f"{k['recorded']} entries for {k['requests']} answered + {k['sent'] - k['requests']} cut "
                    f"at {k['rps']:.0f} req/s, p99 {k['p99_ms']:.1f} ms",
                    verdict=_verdict(k["requests"] <= k["recorded"] <= k["sent"]),
                )
            )
        w = r.get("workers")
        if w is None:
            pass  # not measured in this run (--only)
        elif not w.get("available"):
            self.rows.append(
                Row(
                    "7. ledger serve --workers N",
                    "not available (no --workers option)",
                    verdict="n/a",
                )
            )
        else:
            runs = w["runs"]
            one = runs["1"]["rps"]
            for n, figures in runs.items():
                grows = n == "1" or figures["rps"] > 1.1 * one
                self.rows.append(
                    Row(
                        f"7. --workers {n}, 40 conn (grows with workers; budgets exact)",
                        f"{figures['rps']:.0f} req/s; {figures['recorded']} entries for "
                        f"{figures['completed']} answered ({figures.get('errors', 0)} errors); "
                        f"budget exact: {figures['budget_exact']} (a budget created a moment before: "
                        f"{figures.get('fresh_budget_exact')})",
                        f"{one:.0f} req/s (1 worker)",
                        f"{figures['rps'] / one:.2f}",
                        _verdict(
                            grows
                            and not figures.get("errors")
                            and figures["budget_exact"]
                            and figures.get("fresh_budget_exact", True)
                            and figures["completed"] <= figures["recorded"] <= figures["sent"]
                        ),
                    )
                )
        for name, ok in r.get("integrity", {}).items():
            self.rows.append(
                Row(
                    f"budget spend == sum of ledger costs, {name}",
                    "yes" if ok else "NO",
                    verdict=_verdict(ok),
                )
            )
        if "anthropic" in r:
            a = r["anthropic"]
            self.rows.append(
                Row(
                    "Anthropic /v1/messages added latency, 1 conn, SQLite, p50/p99",
                    f"{a['ledger-sqlite']['p50_ms'] - a['upstream']['p50_ms']:.2f} / "
                    f"{a['ledger-sqlite']['p99_ms'] - a['upstream']['p99_ms']:.2f} ms",
                )
            )

    def print_table(self) -> str:
        with_litellm = "litellm" in self.results.get("sweep", {})
        header = ["target", "Ledger", "baseline (bare pass-through)", "ratio", "pass/fail"]
        if with_litellm:
            header.insert(3, "LiteLLM")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [row.target, row.ledger, row.baseline, row.ratio, row.verdict]
            if with_litellm:
                cells.insert(3, row.litellm)
            lines.append("| " + " | ".join(cells) + " |")
        text = "\n".join(lines)
        print(text)
        return text


# -- helpers ------------------------------------------------------------------------------


def fresh_postgres(url: str, name: str) -> str:
    """An empty database ``name`` beside the one at ``url`` (dropped first); its URL."""
    admin = url.rstrip("/").rsplit("/", 1)[0]
    _psql(f"{admin}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _psql(f"{admin}/postgres", f'CREATE DATABASE "{name}"')
    return f"{admin}/{name}"


def _psql(url: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql: {result.stderr.strip()}")
    return result.stdout.strip()


def _sql(database_url: str, sql: str) -> Any:
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as connection:
            return connection.execute(sql).fetchone()[0]
    plain = database_url.replace("postgresql+asyncpg://", "postgresql://")
    return _psql(plain, sql)


def ledger_count(ledger: LedgerServer) -> int:
    return int(_sql(ledger.database_url, "SELECT count(*) FROM ledger_entries"))


def settled_count(ledger: LedgerServer, before: int, completed: int, sent: int) -> int:
    """Entries written since ``before``, once the requests still in flight have settled.

    wrk stops with up to one request per connection in flight: Ledger records those
    too (the client left), so the count lands between ``completed`` and ``sent``.
    """
    deadline = time.monotonic() + 10.0
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = ledger_count(ledger) - before
        if count >= sent:
            return count
        if count != last:
            last, stable_since = count, time.monotonic()
        elif count >= completed and time.monotonic() - stable_since > 1.0:
            return count
        time.sleep(0.1)
    return last


def budget_matches_ledger(ledger: LedgerServer) -> bool:
    """The key budget's settled spend equals the sum of the key's ledger entry costs.

    One statement, so both sums come from one snapshot; asked again a few times in case a
    request that was still in flight commits meanwhile.
    """
    assert ledger.tenant is not None
    budget_id, key_id = int(ledger.tenant.budget_id), int(ledger.tenant.key_id)
    query = (
        "SELECT (SELECT coalesce(sum(spent_nanos), 0) FROM budget_periods"  # noqa: S608
        f" WHERE budget_id = {budget_id}) - (SELECT coalesce(sum(cost_nanos), 0)"
        f" FROM ledger_entries WHERE key_id = {key_id})"
    )
    for _ in range(5):
        if int(_sql(ledger.database_url, query) or 0) == 0:
            return True
        time.sleep(1.0)
    return False


def machine() -> dict[str, Any]:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory": memory.strip(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "wrk": subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0:1],
        "nginx": subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
        "packages": _package_versions(),
        "parallel_cpu_slowdown": parallel_cpu_slowdown(),
    }


_PACKAGES = ("litestar", "uvicorn", "uvloop", "httptools", "aiohttp", "sqlalchemy", "aiosqlite",
             "asyncpg", "msgspec", "tiktoken")  # fmt: skip


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


_SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(5_000_000): x += i\nprint(time.perf_counter() - t)"


def parallel_cpu_slowdown(repeats: int = 3) -> float | None:
    """How much slower a CPU-bound loop runs while another runs on the other CPU.

    1.0 on two real cores. On a VM whose virtual CPUs share a physical core, or whose
    host is busy, it is higher, and every figure that needs both CPUs at once (the
    server beside its load driver, a writer thread beside the event loop) suffers with
    it: worth knowing before comparing runs from different machines.
    """
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return None

    def spin(cpu: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-c", _SPIN],
            stdout=subprocess.PIPE,
            text=True,
        )

    ratios = []
    for _ in range(repeats):
        alone = float(spin(0).communicate()[0])
        pair = [spin(0), spin(1)]
        together = max(float(process.communicate()[0]) for process in pair)
        ratios.append(together / alone)
    return round(statistics.median(ratios), 2)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base > 0 else "—"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def _progress(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s per point, 60 s soak")
    parser.add_argument("--rounds", type=int, help="rounds of the concurrency sweep (median taken)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement point")
    parser.add_argument("--soak-seconds", type=int, help="soak length (default 60 quick, 600 full)")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="any database on the server; dedicated ones are created next to it",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--litellm-python", default=DEFAULT_LITELLM, help="python of a venv with litellm[proxy]"
    )
    parser.add_argument(
        "--load-cpus", help="CPU list for nginx, wrk and the Python clients (default: the last CPU)"
    )
    parser.add_argument(
        "--only",
        default="sweep,streaming,writer,bigprompt,soak,workers,anthropic",
        help="comma-separated parts to run",
    )
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latest.json"))
    parser.add_argument("--plot", default=str(BENCH_DIR / "latency.png"))
    parser.add_argument(
        "--from-results", help="print the table and plot of an earlier results file"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, databases)"
    )
    args = parser.parse_args()
    parts = set(args.only.split(","))
    bench = Bench(args)
    out = Path(args.out)
    if args.from_results:
        bench.results = json.loads(Path(args.from_results).read_text())
        shutil.rmtree(bench.work, ignore_errors=True)
    else:
        try:
            bench.start()
            _progress(f"servers up; work directory {bench.work}")
            steps = [
                ("sweep", bench.sweep),
                ("streaming", bench.streaming),
                ("anthropic", bench.anthropic),
                ("bigprompt", bench.big_prompt),
                ("writer", bench.writer),
                ("soak", bench.soak),
                ("workers", bench.workers),
            ]
            for name, step in steps:
                if name in parts:
                    _progress(f"-- {name}")
                    step()
            bench.integrity()
        finally:
            bench.stop()
        bench.results["finished_at"] = datetime.now(UTC).isoformat()
        bench.results["load_average_at_end"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(bench.results, indent=1, default=str), encoding="utf-8")
        print(f"\nfigures: {out}", file=sys.stderr)
    if "sweep" in bench.results:
        bench.table()
        bench.print_table()
        try:
            from plot import plot

            plot(bench.results, Path(args.plot))
            print(f"plot: {args.plot}", file=sys.stderr)
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)


if __name__ == "__main__":
    main()
