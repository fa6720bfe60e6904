"""Every example in README.md runs as written, so the README cannot drift again.

The README's own TOML example once failed to start (a ``[[prices]]`` entry without
``provider``) and its Anthropic snippet held ``messages=[...]``. Here each fenced block is
taken from the file and run:

- ```` ```toml ```` blocks are loaded by Ledger's config loader and served (temp SQLite),
  with no network at start-up: providers at api.openai.com are never called;
- ```` ```sh ```` and ```` ```python ```` blocks run in order in one shell, as a user types
  them into one terminal, in an empty directory; Python blocks talk to the ``ledger serve``
  the Quickstart started (the built-in mock provider);
- the PostgreSQL block runs against a database of its own on the test server.

What the test changes, and why, is listed in ``SUBSTITUTIONS`` and ``SKIPPED``; nothing
else is touched.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ledger.config import load_settings
from tests.live import ADMIN_KEY, LiveServer
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
KEY = re.compile(r'"key":"(sk-ledger-[A-Za-z0-9_-]+)"')
CURL_STATUS = re.compile(r"\[curl: HTTP (\d{3})\]")


@dataclass(frozen=True)
class Example:
    language: str
    text: str
    line: int  # where the block starts in README.md

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def readme_examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        found.append(Example(match.group(1), match.group(2), line))
    return found


# Blocks the test does not run, each with its reason. Nothing else is skipped.
SKIPPED: dict[str, Callable[[Example], bool]] = {
    # The test runs inside the environment these commands build: installing would need
    # the network and would test the installed copy rather than this checkout.
    "installs packages": lambda e: bool(re.search(r"pip install|python3 -m venv", e.text)),
    # Running the test suite from inside the test suite would only recurse.
    "runs the test suite": lambda e: bool(re.search(r"\bpytest\b", e.text)),
    # A listing (the source layout), not something to run.
    "is not code": lambda e: e.language == "",
}

# What the test changes in a block before running it:
# - port 8080 becomes a free port (and LEDGER_PORT says the same to `ledger serve`):
#   other test runs may be using 8080;
# - "sk-ledger-..." in Python becomes the key the Quickstart's curl created;
# - the PostgreSQL block's db.internal URL becomes a database of the test server, its
#   foreground `ledger serve` runs in the background until /readyz answers, and on
#   127.0.0.1 rather than 0.0.0.0 (tests listen on loopback only).
SUBSTITUTIONS = ("port 8080", "the client key", "the PostgreSQL block's URL and server")


def _skip_reason(example: Example) -> str | None:
    return next((reason for reason, rule in SKIPPED.items() if rule(example)), None)


def _is_postgres(example: Example) -> bool:
    return "postgresql://ledger@db.internal" in example.text


def test_every_example_is_run_or_skipped_for_a_stated_reason() -> None:
    examples = readme_examples()
    planned = {"toml": 0, "sh": 0, "python": 0}
    for example in examples:
        if _skip_reason(example) is None:
            assert example.language in planned, f"{example}: no test runs this language"
            planned[example.language] += 1
    # The Quickstart (server, curl), the budget and the PostgreSQL commands; both SDKs.
    assert planned["sh"] >= 4 and planned["python"] >= 1 and planned["toml"] >= 1, planned


# -- the TOML examples ------------------------------------------------------------------


class NetworkAudit:
    """Every host name looked up or connected to in this process while it is recording."""

    def __init__(self) -> None:
        self.recording = False
        self.hosts: list[str] = []
        sys.addaudithook(self._hook)  # cannot be removed: it records only when asked

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.recording:
            return
        if event == "socket.getaddrinfo":
            self.hosts.append(str(args[0]))
        elif event == "socket.connect" and isinstance(args[1], tuple):
            self.hosts.append(str(args[1][0]))

    def outside_loopback(self) -> list[str]:
        loopback = {"127.0.0.1", "localhost", "::1", "None", ""}
        return sorted({h for h in self.hosts if h not in loopback})


AUDIT = NetworkAudit()


@pytest.mark.parametrize(
    "example",
    [e for e in readme_examples() if e.language == "toml" and _skip_reason(e) is None],
    ids=str,
)
def test_the_toml_example_loads_and_starts_without_calling_any_provider(
    example: Example, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.toml"
    path.write_text(example.text, encoding="utf-8")
    # Secrets named by *_env get dummy values, as a deployment would set real ones.
    env = {name: f"dummy-{name.lower()}" for name in re.findall(r'_env = "(\w+)"', example.text)}
    settings = load_settings(env=env, config_file=path).with_overrides(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        admin_key=ADMIN_KEY,
        journal_dir=str(tmp_path / "journal"),
        scheduler=False,  # its jobs would deliver alerts, which is not start-up
        writer_process=False,
    )
    AUDIT.hosts.clear()
    AUDIT.recording = True
    try:
        with LiveServer(settings) as server:
            key = server.team_key()
            listed = httpx.get(
                server.url + "/v1/models", headers={"authorization": f"Bearer {key}"}
            )
            prices = server.admin.get("/admin/prices").json()["data"]
    finally:
        AUDIT.recording = False
    assert AUDIT.outside_loopback() == []

    assert listed.status_code == 200, listed.text
    ids = {model["id"] for model in listed.json()["data"]}
    document = tomllib.loads(example.text)
    # The [[models]] entries are served, and so is the rest of the catalog beside them.
    assert {m["name"] for m in document.get("models", [])} | {"gpt-4o", "claude-haiku-4-5"} <= ids
    for price in document.get("prices", []):
        (row,) = [r for r in prices if r["model"] == price["model"] and r["origin"] == "config"]
        assert Decimal(row["input_per_million_usd"]) == Decimal(price["input"])
        assert row["provider"] in {p.name for p in settings.providers}


# -- the shell and Python examples ------------------------------------------------------


class Terminal:
    """One bash session, fed the README's blocks one after another, as a user would."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.transcript: list[str] = []
        # A session of its own, so that everything started from it is stopped with it.
        self._shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.run("set -euo pipefail")

    def _read(self) -> None:
        assert self._shell.stdout is not None
        for raw in self._shell.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def run(self, script: str, *, timeout: float = 120.0) -> str:
        """Run ``script``; its output. A failing command ends the session (``set -e``)."""
        marker = f"__readme_block_done_{uuid.uuid4().hex}__"
        assert self._shell.stdin is not None
        self._shell.stdin.write(f"{script}\nprintf '\\n%s\\n' {marker}\n".encode())
        self._shell.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                # A server started with `&` keeps the output open after the shell has gone.
                if self._shell.poll() is not None:
                    line = None
                elif time.monotonic() > deadline:
                    raise AssertionError(f"no end after {timeout} s:\n{self.log(output)}") from None
                else:
                    continue
            if line is None:
                raise AssertionError(f"a command failed; the session ended:\n{self.log(output)}")
            if marker in line:
                break
            output.append(line)
        self.transcript += output
        return "".join(output)

    def log(self, output: list[str]) -> str:
        return "".join(self.transcript + output)[-6000:]

    def close(self) -> None:
        # The whole session: a server started with `&` outlives a shell that failed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._shell.pid, signal.SIGTERM)
        self._shell.wait(timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[Terminal, int]]:
    """A shell in an empty directory, with this checkout's ``ledger`` on the PATH."""
    home = tmp_path / "home"
    home.mkdir()
    # Every visible curl shows its HTTP status, so a 4xx answer fails the test.
    (home / ".curlrc").write_text('write-out = "\\n[curl: HTTP %{http_code}]\\n"\n')
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),  # the `ledger` command runs this checkout
        "LEDGER_PORT": str(port),
        "LEDGER_LOG_LEVEL": "WARNING",
        "LANG": "C.UTF-8",
    }
    shell = Terminal(work, env)
    try:
        yield shell, port
    finally:
        shell.close()


def _substituted(example: Example, port: int, client_key: str | None) -> str:
    text = example.text.replace(":8080", f":{port}")
    if example.language == "python" and "sk-ledger-..." in text:
        assert client_key, f"{example} needs the key a Quickstart curl creates"
        text = text.replace('"sk-ledger-..."', f'"{client_key}"')
    return text


def test_the_shell_and_python_examples_run_as_written(terminal: tuple[Terminal, int]) -> None:
    shell, port = terminal
    client_key: str | None = None
    ran = []
    for example in readme_examples():
        if (
            example.language not in ("sh", "python")
            or _skip_reason(example)
            or _is_postgres(example)
        ):
            continue
        text = _substituted(example, port, client_key)
        if example.language == "python":
            text = f"python3 - <<'README_PYTHON'\n{text}README_PYTHON"
        output = shell.run(text)
        statuses = CURL_STATUS.findall(output)
        assert all(s.startswith("2") for s in statuses), f"{example}:\n{output}"
        client_key = (KEY.findall(output) or [client_key])[-1]
        ran.append(example)
    assert len(ran) >= 4

    # What the examples did is in the ledger: both SDK calls, answered and recorded.
    admin_key = shell.run('echo "$ADMIN"').strip().splitlines()[-1]
    admin = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {admin_key}"}
    )
    entries = admin.get("/api/usage").json()["data"]
    assert sorted((e["requested_model"], e["status"]) for e in entries) == [
        ("claude-sonnet-4-5", "ok"),
        ("gpt-4.1-mini", "ok"),
    ]
    budgets = admin.get("/admin/budgets").json()["data"]
    rules = [b["budget"] for b in budgets]
    assert [(r["scope"], r["mode"], r["limit_usd"]) for r in rules] == [
        ("team", "hard", "500.000000000")
    ]
    admin.close()
    shell.run("kill $(jobs -p) && wait || true")


def test_the_postgresql_example_runs(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the PostgreSQL example runs on the PostgreSQL half")
    (example,) = [e for e in readme_examples() if e.language == "sh" and _is_postgres(e)]
    port = free_port()
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    text = re.sub(r"postgresql://ledger@db\.internal:5432/ledger", url, example.text)
    serve = re.compile(r"^ledger serve --host 0\.0\.0\.0$", flags=re.MULTILINE)
    assert serve.search(text), "the block's last command is a foreground `ledger serve`"
    text = serve.sub(
        f"ledger serve --host 127.0.0.1 &\n"
        f"until curl -sf localhost:{port}/readyz >/dev/null; do sleep 0.2; done",
        text,
    )
    (tmp_path / "home").mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
        "LEDGER_PORT": str(port),
        "LEDGER_ADMIN_KEY": ADMIN_KEY,
        "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_SCHEDULER": "off",
    }
    shell = Terminal(tmp_path, env)
    try:
        output = shell.run(text)
        assert "database at revision" in output
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["status"] == "ready" and ready["migrations"] == "current"
        shell.run("kill $(jobs -p) && wait || true")
    finally:
        shell.close()
