"""The ``ledger`` command, run as a user runs it: a real process, its output, its exit code."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from ledger.admin.credentials import admin_key_file
from ledger.config import Settings
from ledger.db.migrate import head_revision
from tests.live import ADMIN_KEY, LiveServer

LEDGER = str(Path(sys.executable).parent / "ledger")
MODEL = "gpt-4.1-mini"
KEY_LINE = re.compile(r"^sk-ledger-[A-Za-z0-9_-]{40,}$")
ADMIN_KEY_PATTERN = re.compile(r"sk-ledger-admin-[A-Za-z0-9_-]+")
# The code under test, when it is not the installed package (a checkout on PYTHONPATH).
_PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def _plain_url(database_url: str) -> str:
    """The URL as a user would write it: no async driver named (Ledger adds it)."""
    return database_url.replace("sqlite+aiosqlite://", "sqlite://").replace(
        "postgresql+asyncpg://", "postgresql://"
    )


def _ledger(
    database_url: str, *args: str, check: bool = True, plain_url: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LEDGER_DATABASE_URL": _plain_url(database_url) if plain_url else database_url,
        **_PYTHONPATH,
    }
    result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"ledger {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


# -- db ---------------------------------------------------------------------------------


def test_db_upgrade_then_db_current_says_up_to_date(database_url: str) -> None:
    before = _ledger(database_url, "db", "current").stdout
    assert "current: (empty database)" in before
    assert "needs `ledger db upgrade`" in before

    # The URL with the async driver named works as well as the plain one.
    upgraded = _ledger(database_url, "db", "upgrade", plain_url=False).stdout
    assert upgraded.strip() == f"database at revision {head_revision()}"

    after = _ledger(database_url, "db", "current").stdout.splitlines()
    assert after == [f"current: {head_revision()}", f"head: {head_revision()}", "up to date"]


# -- teams and keys ---------------------------------------------------------------------


def test_a_key_made_on_the_command_line_works_against_the_server(database_url: str) -> None:
    created = _ledger(database_url, "teams", "create", "research", "--cost-centre", "CC-7")
    assert created.stdout.startswith("created team research (id ")
    listed = [
        line.split("\t") for line in _ledger(database_url, "teams", "list").stdout.splitlines()
    ]
    assert [row[1:] for row in listed] == [["research", "CC-7"]]

    made = _ledger(database_url, "keys", "create", "--team", "research", "--name", "laptop")
    lines = made.stdout.splitlines()
    key = lines[-1]
    assert KEY_LINE.match(key), made.stdout
    assert key not in "\n".join(lines[:-1]) + made.stderr
    key_id = int(re.search(r"created key (\d+)", made.stdout).group(1))

    # The key list shows the prefix and never the key.
    key_list = _ledger(database_url, "keys", "list").stdout
    assert key not in key_list
    assert key[:16] in key_list
    assert f"{key_id}\tresearch\tlaptop\t" in key_list

    settings = Settings(database_url=database_url, admin_key=ADMIN_KEY, key_cache_ttl_s=0.2)
    with LiveServer(settings) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "made on the command line"}]
        )
        assert raw.parse().choices[0].message.content
        entry = server.entry(raw.headers["x-ledger-request-id"])
        assert entry["team"] == "research"
        assert entry["key_id"] == key_id
        assert entry["status"] == "ok"

        # Revoking from another process reaches the server within its key-cache period.
        assert _ledger(database_url, "keys", "revoke", str(key_id)).stdout.strip() == (
            f"revoked key {key_id}"
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                client.models.list()
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.05)
    (row,) = _ledger(database_url, "keys", "list").stdout.splitlines()
    assert row.split("\t") == [str(key_id), "research", "laptop", key[:16] + "…", "revoked"]


def test_mistakes_are_one_line_errors_not_tracebacks(database_url: str, tmp_path: Path) -> None:
    _ledger(database_url, "teams", "create", "research")
    not_json = tmp_path / "prices.json"
    not_json.write_text("{not json", encoding="utf-8")
    mistakes = {
        ("keys", "create", "--team", "nobody"): "no team named 'nobody'",
        ("keys", "revoke", "4242"): "no key with id 4242",
        ("teams", "create", "research"): "a team named 'research' already exists",
        ("teams", "create", " "): "team name must be 1 to 100 characters",
        ("prices", "import", str(not_json)): f"{not_json}: the price map is not valid JSON",
    }
    with ThreadPoolExecutor(len(mistakes)) as pool:
        results = dict(
            zip(
                mistakes,
                pool.map(lambda args: _ledger(database_url, *args, check=False), mistakes),
                strict=True,
            )
        )
    for args, message in mistakes.items():
        result = results[args]
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr, args
        assert result.stderr.startswith(f"Error: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- prices -----------------------------------------------------------------------------


PRICE_MAP = {
    "sample_spec": {"mode": "one of: chat, embedding, ...", "input_cost_per_token": 0},
    "acme-chat-1": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 3e-06,
    },
    MODEL: {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 5e-07,
        "cache_read_input_token_cost": 1.25e-07,
        "output_cost_per_token": 2e-06,
    },
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2.5e-06,
        "cache_read_input_token_cost": 1.25e-06,
        "output_cost_per_token": 1e-05,
    },
    "per-million-mistake": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 0.4,
        "output_cost_per_token": 1.6,
    },
    "text-embedding-3-small": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "input_cost_per_token": 2e-08,
        "output_cost_per_token": 0,
    },
}


@pytest.fixture
def price_map(tmp_path: Path) -> Path:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(PRICE_MAP, indent=4), encoding="utf-8")
    return path


def _price_rows(database_url: str) -> list[list[str]]:
    lines = _ledger(database_url, "prices", "list").stdout.splitlines()
    header = "model\teffective_from\torigin\tinput/1M\tcached/1M\toutput/1M"
    assert lines[0] == header + "\tprovider\tsource\ttiers\tfees"
    # The first six columns are the prices; provider, source and tiers follow.
    return [line.split("\t")[:6] for line in lines[1:]]


def test_price_import_reports_added_changed_unchanged_and_refused(
    database_url: str, price_map: Path
) -> None:
    dry = _ledger(database_url, "prices", "import", str(price_map), "--dry-run").stdout
    assert dry.splitlines()[-1] == (
        "1 added, 1 changed, 1 unchanged, 1 refused, 2 skipped (dry run: nothing written)"
    )

    report = _ledger(database_url, "prices", "import", str(price_map)).stdout.splitlines()
    # The dry run wrote nothing: the real import still finds the same changes.
    assert report[-1] == "1 added, 1 changed, 1 unchanged, 1 refused, 2 skipped"
    assert "added    acme-chat-1" in report
    assert f"changed  {MODEL}" in report
    (refused,) = [line for line in report if line.startswith("refused")]
    assert refused.startswith("refused  per-million-mistake: input of $0.4 per token")
    assert "per-million price in a per-token field" in refused
    assert not any("gpt-4o" in line for line in report)

    rows = _price_rows(database_url)
    today = str(datetime.now(UTC).date())
    imported = {row[0]: row for row in rows if row[2] == "import"}
    assert imported == {
        "acme-chat-1": [
            "acme-chat-1",
            today,
            "import",
            "1.000000000",
            "1.000000000",
            "3.000000000",
        ],
        MODEL: [MODEL, today, "import", "0.500000000", "0.125000000", "2.000000000"],
    }
    catalog = [row for row in rows if row[0] == MODEL and row[2] == "catalog"]
    assert catalog == [
        [MODEL, "2025-04-14", "catalog", "0.400000000", "0.100000000", "1.600000000"]
    ]

    # Importing the same file again changes nothing.
    again = _ledger(database_url, "prices", "import", str(price_map)).stdout.splitlines()
    assert again[-1] == "0 added, 0 changed, 3 unchanged, 1 refused, 2 skipped"

    # A server started on the database charges the imported price.
    with LiveServer(Settings(database_url=database_url, admin_key=ADMIN_KEY)) as server:
        client = openai.OpenAI(
            base_url=server.openai_base_url, api_key=server.team_key(), max_retries=0
        )
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "priced by import"}]
        )
        usage = raw.parse().usage
        entry = server.entry(raw.headers["x-ledger-request-id"])
    expected = usage.prompt_tokens * Decimal("0.50") + usage.completion_tokens * Decimal("2.00")
    assert Decimal(entry["cost_usd"]) == expected / 1_000_000


# -- ledger serve, as a new user runs it ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Serve:
    """``ledger serve`` in ``directory`` with nothing but PATH, HOME and LEDGER_PORT set."""

    def __init__(
        self, directory: Path, home: Path, port: int, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        env = {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin",
            "HOME": str(home),
            "LEDGER_PORT": str(port),
            **_PYTHONPATH,
            **(env or {}),
        }
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            ["ledger", "serve", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=self._log_file,  # both streams, as a service manager collects them
            stderr=self._log_file,
        )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.kill()
            raise

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"ledger serve exited:\n{self.stderr}"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"ledger serve did not start:\n{self.stderr}"
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log_file.close()


@pytest.fixture
def new_user(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    directory, home = tmp_path / "project", tmp_path / "home"
    directory.mkdir()
    home.mkdir()
    yield directory, home


def test_serve_with_no_configuration_just_works(new_user: tuple[Path, Path]) -> None:
    directory, home = new_user
    port = _free_port()
    server = _Serve(directory, home, port, directory.parent / "first.log")
    try:
        # Neither stdout nor stderr (not a terminal here) carries the generated key: they
        # are where logs are collected. It is in a file only its owner can read.
        output = server.stderr
        assert not ADMIN_KEY_PATTERN.search(output), output
        key_file = directory / "ledger.db.admin-key"
        assert str(key_file.name) in output
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin_key = key_file.read_text().strip()
        assert ADMIN_KEY_PATTERN.fullmatch(admin_key)
        assert "MOCK" in output

        admin = {"authorization": f"Bearer {admin_key}"}
        team = httpx.post(server.url + "/admin/teams", json={"name": "research"}, headers=admin)
        assert team.status_code == 201, team.text
        made = httpx.post(server.url + "/admin/keys", json={"team": "research"}, headers=admin)
        assert made.status_code == 201, made.text
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key=made.json()["key"], max_retries=0
        )
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "my first request"}]
        )
        assert raw.parse().choices[0].message.content
        request_id = raw.headers["x-ledger-request-id"]
        usage = httpx.get(server.url + "/api/usage", headers=admin).json()["data"]
        assert [entry["request_id"] for entry in usage] == [request_id]
        assert usage[0]["team"] == "research"
        assert Decimal(usage[0]["cost_usd"]) > 0
    finally:
        code = server.stop()
    assert code == 0, server.stderr
    assert (directory / "ledger.db").is_file()
    assert "Traceback" not in server.stderr

    # A restart keeps the database and the admin key, names its file again, makes no new one.
    again = _Serve(directory, home, port, directory.parent / "second.log")
    try:
        assert not ADMIN_KEY_PATTERN.search(again.stderr), again.stderr
        assert str(key_file.name) in again.stderr
        assert key_file.read_text().strip() == admin_key
        teams = httpx.get(again.url + "/admin/teams", headers=admin)
        assert teams.status_code == 200
        assert [t["name"] for t in teams.json()["data"]] == ["research"]
        assert len(httpx.get(again.url + "/api/usage", headers=admin).json()["data"]) == 1
    finally:
        again_code = again.stop()
    assert again_code == 0, again.stderr
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("ledger.db")) == []


def test_a_generated_admin_key_is_kept_in_a_private_file_not_in_the_output(
    database_url: str, new_user: tuple[Path, Path]
) -> None:
    directory, home = new_user
    journal = directory / "journal"
    env = {"LEDGER_DATABASE_URL": _plain_url(database_url), "LEDGER_JOURNAL_DIR": str(journal)}
    server = _Serve(directory, home, _free_port(), directory.parent / "serve.log", env)
    try:
        output = server.stderr
        key_file = admin_key_file(database_url, str(journal))
        if not key_file.is_absolute():
            key_file = directory / key_file
        assert str(key_file.name) in output
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin_key = key_file.read_text().strip()
        assert not ADMIN_KEY_PATTERN.search(output), output
        teams = httpx.get(
            server.url + "/admin/teams", headers={"authorization": f"Bearer {admin_key}"}
        )
        assert teams.status_code == 200, teams.text
    finally:
        assert server.stop() == 0, server.stderr
