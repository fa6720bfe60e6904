"""Runs an agent CLI (Claude Code or Codex) through Ledger against the fake provider.

Only ever run inside a loopback-only network namespace (``tests/integration/test_agents.py``
starts it as ``unshare -n -- bash -c 'ip link set lo up && python -m tests.agent_harness …'``):
the CLIs try to reach the internet, and here there is none to reach. Everything they talk
to — the fake provider and ``ledger serve`` — is started by this script inside the same
namespace. Ledger is configured with ``[[providers]]`` only.

Prints one JSON document on stdout: the CLI's exit code and output, every request the fake
provider received, and every ledger entry, for the test to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fake_upstream import FakeUpstream
from tests.processes import LedgerProcess, write_provider_config

CLAUDE_MODEL = "claude-opus-4-8"  # Claude Code's default model
CODEX_MODEL = "gpt-6.2-sol"  # Codex CLI's default model
ANSWER_WORDS = 3  # the fake answers "word0 word1 word2" (its reply_words directive)
PROMPT = f"reply_words={ANSWER_WORDS} Say hello."
CLI_TIMEOUT_S = 180


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("agent", choices=["claude", "codex"])
    parser.add_argument("--bin", required=True, help="the directory holding claude and codex")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-agent-") as scratch:
        print(json.dumps(run(args.agent, Path(args.bin), Path(scratch))))
    return 0


def run(agent: str, bin_dir: Path, scratch: Path) -> dict[str, Any]:
    with FakeUpstream() as fake:
        config = write_provider_config(scratch / "ledger.toml", fake)
        database = f"sqlite+aiosqlite:///{scratch / 'ledger.db'}"
        with LedgerProcess(database, config=config, log=scratch / "ledger.log") as ledger:
            admin = httpx.Client(
                base_url=ledger.url, headers={"authorization": f"Bearer {ledger.admin_key}"}
            )
            assert admin.post("/admin/teams", json={"name": "agents"}).status_code == 201
            created = admin.post("/admin/keys", json={"team": "agents", "name": agent})
            key = created.json()["key"]
            home = scratch / "home"
            home.mkdir()
            work = scratch / "work"
            work.mkdir()
            command, env = (_claude if agent == "claude" else _codex)(
                bin_dir, ledger.url, key, home
            )
            started = time.monotonic()
            try:
                done = subprocess.run(
                    command,
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=CLI_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
                exit_code, stdout, stderr = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired as expired:
                exit_code = -1
                stdout = _text(expired.stdout)
                stderr = _text(expired.stderr) + f"\n(timed out after {CLI_TIMEOUT_S} s)"
            seconds = time.monotonic() - started
            time.sleep(0.5)  # streams record at their end; let the last one land
            entries = admin.get("/api/usage", params={"limit": 1000}).json()["data"]
            prices = admin.get("/admin/prices").json()["data"]
        log = (scratch / "ledger.log").read_text(errors="replace")[-4000:]
        return {
            "exit_code": exit_code,
            "stdout": stdout,
            "stderr": stderr[-4000:],
            "seconds": seconds,
            "answer": " ".join(f"word{i}" for i in range(ANSWER_WORDS)),
            "provider_requests": [
                {
                    "method": r.method,
                    "path": r.path,
                    "model": r.json.get("model") if isinstance(r.json, dict) else None,
                    "stream": r.json.get("stream") if isinstance(r.json, dict) else None,
                }
                for r in fake.requests
            ],
            "entries": entries,
            "prices": prices,
            "ledger_log": log,
        }


def _claude(bin_dir: Path, url: str, key: str, home: Path) -> tuple[list[str], dict[str, str]]:
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": key,
        "DISABLE_AUTOUPDATER": "1",
    }
    return [str(bin_dir / "claude"), "-p", PROMPT], env


def _codex(bin_dir: Path, url: str, key: str, home: Path) -> tuple[list[str], dict[str, str]]:
    codex_home = home / ".codex"
    codex_home.mkdir()
    # A custom provider: Ledger's base URL, the team key from the environment, Responses API.
    (codex_home / "config.toml").write_text(
        f"""model_provider = "ledger"

[model_providers.ledger]
name = "Ledger"
base_url = "{url}/v1"
env_key = "LEDGER_TEAM_KEY"
wire_api = "responses"
""",
        encoding="utf-8",
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "LEDGER_TEAM_KEY": key,
    }
    command = [
        str(bin_dir / "codex"),
        "exec",
        "--skip-git-repo-check",
        "--sandbox",
        "read-only",
        PROMPT,
    ]
    return command, env


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
