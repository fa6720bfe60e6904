"""The processes a benchmark run starts: Ledger, the bare pass-through, LiteLLM.

Each is a subprocess on a free loopback port, started and stopped by the harness; the
fast upstream is in ``upstream.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ADMIN_KEY = "sk-ledger-admin-bench-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-bench-0123456789"
# Which catalog model is served by which upstream behaviour (see upstream.py).
JSON_MODEL = "gpt-4.1-mini"
SSE_MODEL = "gpt-4.1-nano"
PACED_MODEL = "gpt-4.1"
ANTHROPIC_MODEL = "claude-sonnet-4-5"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 30
) -> Any:
    """A small JSON request with the standard library (set-up and checks, never timed)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url}: {error.code} {error.read()[:500]!r}") from error


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its children (workers), from /proc."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def read_stat(path: Path) -> tuple[str, int, int]:
    """A /proc ``stat`` file's command name, user and system CPU time (clock ticks)."""
    stat = path.read_text()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]  # a name may hold spaces and ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, int(fields[11]), int(fields[12])  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its children (workers) so far, from /proc."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            _, user, system = read_stat(Path(f"/proc/{each}/stat"))
        except OSError:
            continue
        total += user + system
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        for task in tasks:
            children = (task / "children").read_text().split()
            for child in children:
                found += [int(child), *_children(int(child))]
    except OSError:
        pass
    return found


class Server:
    """A subprocess serving HTTP on 127.0.0.1:``port``; stopped with SIGTERM."""

    name = "server"
    health_path = "/healthz"

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{self.name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        wait_healthy(self.url + self.health_path, self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PassthroughServer(Server):
    name = "passthrough"

    def __init__(self, log_dir: Path, upstream: str, client: str = "aiohttp") -> None:
        if client != "aiohttp":
            self.name = f"passthrough-{client}-client"
        super().__init__(log_dir)
        self.upstream = upstream
        self.client = client

    def command(self) -> list[str]:
        return [
            sys.executable, str(BENCH_DIR / "passthrough.py"),
            "--port", str(self.port), "--upstream", self.upstream, "--client", self.client,
        ]  # fmt: skip


def ledger_config(upstream: str) -> str:
    """Providers pointing at the static upstream; a model per upstream behaviour."""
    providers = [
        ("bench-json", "openai", f"{upstream}/json/v1"),
        ("bench-sse", "openai", f"{upstream}/sse/v1"),
        ("bench-paced", "openai", f"{upstream}/paced/v1"),
        ("bench-anthropic", "anthropic", f"{upstream}/json"),
    ]
    models = [
        (JSON_MODEL, "bench-json"),
        (SSE_MODEL, "bench-sse"),
        (PACED_MODEL, "bench-paced"),
        (ANTHROPIC_MODEL, "bench-anthropic"),
    ]
    text = ""
    for name, kind, base_url in providers:
        text += (
            f'[[providers]]\nname = "{name}"\nkind = "{kind}"\nbase_url = "{base_url}"\n'
            'api_key_env = "BENCH_UPSTREAM_KEY"\ntimeout_s = 60\n'
        )
        if kind == "anthropic":
            text += "use_count_tokens = false\n"
        text += "\n"
    for name, provider in models:
        text += f'[[models]]\nname = "{name}"\nprovider = "{provider}"\n\n'
    return text


@dataclass
class Tenant:
    team: str
    key: str
    key_id: int
    budget_id: int


class LedgerServer(Server):
    """``ledger serve`` on SQLite or PostgreSQL, with a team, a key and a hard budget."""

    name = "ledger"

    def __init__(
        self,
        log_dir: Path,
        database_url: str,
        upstream: str,
        *,
        label: str = "ledger",
        workers: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = label
        super().__init__(log_dir)
        self.database_url = database_url
        self.workers = workers
        self.extra_env = extra_env or {}
        self.config = log_dir / f"{label}-{self.port}.toml"
        self.config.write_text(ledger_config(upstream), encoding="utf-8")
        self.journal_dir = log_dir / f"{label}-{self.port}-journal"
        self.tenant: Tenant | None = None

    def command(self) -> list[str]:
        command = [
            # -P: the ledger package comes from PYTHONPATH or the installed one, never
            # from the working directory (a worktree's change is measured by its path).
            sys.executable, "-P", "-m", "ledger.cli", "--config", str(self.config),
            "serve", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        return command

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LEDGER_DATABASE_URL": self.database_url,
            "LEDGER_ADMIN_KEY": ADMIN_KEY,
            "LEDGER_SCHEDULER": "off",
            "LEDGER_JOURNAL_DIR": str(self.journal_dir),
            "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
            **self.extra_env,
        }

    def create_tenant(self, team: str, *, limit_usd: str = "1000000") -> Tenant:
        """A team, a key and a hard monthly budget on the key (large enough never to block)."""
        http_json("POST", self.url + "/admin/teams", {"name": team}, token=ADMIN_KEY)
        key = http_json("POST", self.url + "/admin/keys", {"team": team}, token=ADMIN_KEY)
        budget = http_json(
            "POST",
            self.url + "/admin/budgets",
            {"key_id": key["id"], "limit_usd": limit_usd, "period": "monthly", "mode": "hard"},
            token=ADMIN_KEY,
        )
        self.tenant = Tenant(team, key["key"], key["id"], budget["id"])
        return self.tenant


class LiteLLMServer(Server):
    """LiteLLM proxy (from its own virtual environment), no database, one worker."""

    name = "litellm"
    health_path = "/health/liveliness"

    def __init__(self, log_dir: Path, upstream: str, python: str) -> None:
        super().__init__(log_dir)
        self.python = python
        self.config = log_dir / f"litellm-{self.port}.yaml"
        lines = ["model_list:"]
        for model, prefix in ((JSON_MODEL, "json"), (SSE_MODEL, "sse"), (PACED_MODEL, "paced")):
            lines += [
                f"  - model_name: {model}",
                "    litellm_params:",
                f"      model: openai/{model}",
                f"      api_base: {upstream}/{prefix}/v1",
                f"      api_key: {UPSTREAM_KEY}",
            ]
        lines += ["litellm_settings:", "  drop_params: true", "  telemetry: false"]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def command(self) -> list[str]:
        litellm = str(Path(self.python).parent / "litellm")
        return [
            litellm, "--config", str(self.config), "--host", "127.0.0.1",
            "--port", str(self.port), "--num_workers", "1",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "VIRTUAL_ENV": str(Path(self.python).parent.parent),
        }


def ledger_has_workers_option() -> bool:
    """Whether this Ledger's ``serve`` takes ``--workers``."""
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in result.stdout
