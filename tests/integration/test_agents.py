"""Claude Code and Codex CLI, on their default models, through Ledger to the fake provider.

Each CLI runs inside a loopback-only network namespace (``unshare -n``) together with the
fake provider and ``ledger serve`` (see ``tests/agent_harness.py``): it cannot reach the
internet, and nothing outside sees it. The CLIs come from npm, installed once into
``LEDGER_AGENTS_DIR`` (default ``/work/npm-agents``, else a cache directory) and reused.
Skipped, with the reason, where npm or ``unshare`` is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("@anthropic-ai/claude-code", "@openai/codex")
INSTALL_TIMEOUT_S = 300


def _agents_dir() -> Path:
    configured = os.environ.get("LEDGER_AGENTS_DIR")
    if configured:
        return Path(configured)
    if Path("/work").is_dir():
        return Path("/work/npm-agents")
    return Path.home() / ".cache" / "ledger-npm-agents"


def _agent_bin() -> Path:
    """The npm bin directory with ``claude`` and ``codex``, installing them if needed."""
    prefix = _agents_dir()
    bin_dir = prefix / "node_modules" / ".bin"
    if (bin_dir / "claude").exists() and (bin_dir / "codex").exists():
        return bin_dir
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: cannot install Claude Code and Codex CLI")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *PACKAGES],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as failed:
        pytest.skip(f"npm install of {' '.join(PACKAGES)} failed: {failed}")
    return bin_dir


def _namespace_prefix() -> list[str]:
    """``unshare -n`` (as root) or ``unshare -rn``, if this machine lets us make one."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip is missing: the agent CLIs run only in a network namespace")
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run(
            [*prefix, "--", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return prefix
    pytest.skip("cannot create a network namespace here (unshare -n / -rn refused)")


def _run_agent(agent: str) -> dict[str, Any]:
    if os.environ.get("LEDGER_TEST_BACKENDS", "sqlite") == "postgres":
        # Not a database test: its Ledger keeps a SQLite file inside the namespace, which
        # cannot reach a PostgreSQL server on the host's loopback. Run once, on SQLite.
        pytest.skip("the agent CLIs run in the SQLite pass only (a loopback-only namespace)")
    bin_dir = _agent_bin()
    prefix = _namespace_prefix()
    script = (
        f"ip link set lo up && cd {ROOT} && "
        f"PYTHONPATH={ROOT} {sys.executable} -m tests.agent_harness {agent} --bin {bin_dir}"
    )
    done = subprocess.run(
        [*prefix, "--", "bash", "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def _expected_cost(entry: dict[str, Any], price: dict[str, Any]) -> Decimal:
    usage = entry["usage"]
    per_token = {
        "input_tokens": "input_per_million_usd",
        "cache_read_tokens": "cached_input_per_million_usd",
        "cache_write_5m_tokens": "cache_write_5m_per_million_usd",
        "cache_write_1h_tokens": "cache_write_1h_per_million_usd",
        "output_tokens": "output_per_million_usd",
    }
    total = sum(
        (usage[tokens] * Decimal(price[rate]) for tokens, rate in per_token.items()), Decimal(0)
    )
    return total / Decimal(1_000_000) + Decimal(price["request_fee_usd"])


def _assert_every_request_recorded_at_its_price(run: dict[str, Any], path: str) -> None:
    entries, prices = run["entries"], {p["id"]: p for p in run["prices"]}
    forwarded = [r for r in run["provider_requests"] if r["path"] == path]
    billed = [e for e in entries if e["endpoint"] == forwarded_endpoint(path)]
    assert forwarded, run["provider_requests"]
    assert len(billed) == len(forwarded), (entries, run["provider_requests"])
    for entry in entries:
        assert entry["status"] == "ok", entry
    for entry in billed:
        assert entry["usage_source"] == "provider", entry
        price = prices[entry["price_id"]]
        assert price["model"] == entry["requested_model"]
        assert Decimal(entry["cost_usd"]) == _expected_cost(entry, price), entry
        assert Decimal(entry["cost_usd"]) > 0


def forwarded_endpoint(path: str) -> str:
    return {"/v1/messages": "messages", "/v1/responses": "responses"}[path]


def _explain(run: dict[str, Any]) -> str:
    return f"stdout={run['stdout'][-2000:]!r}\nstderr={run['stderr']}\nledger={run['ledger_log']}"


def test_claude_code_runs_on_its_default_model_and_every_request_is_recorded() -> None:
    run = _run_agent("claude")
    assert run["exit_code"] == 0, _explain(run)
    assert run["answer"] in run["stdout"], _explain(run)
    models = {r["model"] for r in run["provider_requests"] if r["path"] == "/v1/messages"}
    assert "claude-opus-4-8" in models, run["provider_requests"]
    _assert_every_request_recorded_at_its_price(run, "/v1/messages")


def test_codex_cli_runs_on_its_default_model_and_every_request_is_recorded() -> None:
    run = _run_agent("codex")
    assert run["exit_code"] == 0, _explain(run)
    assert run["answer"] in run["stdout"], _explain(run)
    models = {r["model"] for r in run["provider_requests"] if r["path"] == "/v1/responses"}
    assert models == {"gpt-6.2-sol"}, run["provider_requests"]
    _assert_every_request_recorded_at_its_price(run, "/v1/responses")
