"""``ledger doctor`` names each problem of a config and what to fix; exit 1 on any FAIL."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from ledger.db.engine import create_engine
from ledger.db.migrate import upgrade
from tests.fake_upstream import FakeUpstream
from tests.integration.test_cli import _ledger

LEDGER = str(Path(sys.executable).parent / "ledger")
_PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def _migrated(database_url: str) -> None:
    async def run() -> None:
        engine = create_engine(database_url)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(run())


def _doctor(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": "/tmp", **_PYTHONPATH, **env}
    return subprocess.run(
        [LEDGER, "--config", str(config), "doctor"],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _row(output: str, check: str) -> str:
    rows = [line for line in output.splitlines() if line.startswith(check + " ")]
    assert rows, f"no row for {check}:\n{output}"
    return rows[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_good_config_is_all_ok(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    _migrated(database_url)
    config = tmp_path / "ledger.toml"
    config.write_text(f'''
database_url = "{database_url}"
journal_dir = "{tmp_path / "journal"}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{fake_upstream.openai_base_url}"
api_key_env = "FAKE_KEY"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{fake_upstream.anthropic_base_url}"
api_key_env = "FAKE_KEY"
[[models]]
name = "house-mini"
provider = "openai"
upstream_model = "gpt-4.1-mini"
''')
    result = _doctor(config, FAKE_KEY=fake_upstream.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("settings", "database", "journal", "provider openai", "provider anthropic",
                  "model house-mini"):  # fmt: skip
        assert " ok " in _row(result.stdout, check) + " ", result.stdout
    assert fake_upstream.api_key not in result.stdout + result.stderr


def test_a_broken_config_names_each_problem_and_what_to_fix(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Not migrated; the journal directory cannot be written.
    journal = tmp_path / "journal"
    journal.mkdir()
    journal.chmod(0o500)
    config = tmp_path / "ledger.toml"
    config.write_text(f'''
database_url = "{database_url}"
journal_dir = "{journal / "sub"}"
[[providers]]
name = "nokey"
kind = "openai"
base_url = "{fake_upstream.openai_base_url}"
api_key_env = "MISSING_KEY"
[[providers]]
name = "refused"
kind = "anthropic"
base_url = "{fake_upstream.anthropic_base_url}"
api_key_env = "WRONG_KEY"
[[providers]]
name = "down"
kind = "openai"
base_url = "http://127.0.0.1:{_free_port()}/v1"
api_key_env = "WRONG_KEY"
[[models]]
name = "house-unpriced"
provider = "down"
upstream_model = "no-such-model"
''')
    try:
        result = _doctor(config, WRONG_KEY="sk-not-the-key")
    finally:
        journal.chmod(0o700)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "FAIL" in _row(out, "database") and "ledger db upgrade" in _row(out, "database")
    if os.geteuid() != 0:  # root writes anywhere
        assert "FAIL" in _row(out, "journal") and "LEDGER_JOURNAL_DIR" in _row(out, "journal")
    assert "FAIL" in _row(out, "provider nokey") and "MISSING_KEY" in _row(out, "provider nokey")
    refused = _row(out, "provider refused")
    assert "FAIL" in refused and "key refused" in refused and "WRONG_KEY" in refused
    assert "FAIL" in _row(out, "provider down") and "unreachable" in _row(out, "provider down")
    unpriced = _row(out, "model house-unpriced")
    assert "FAIL" in unpriced and "[[prices]]" in unpriced
    assert "warn" in _row(out, "budgets") and "ledger db upgrade" in _row(out, "budgets")
    assert "sk-not-the-key" not in out + result.stderr


def test_a_budget_on_an_unpriced_model_is_named_by_id_with_what_to_fix(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Before: doctor did not look at budgets; this one could never count a cent.
    _migrated(database_url)
    _ledger(database_url, "teams", "create", "research")
    _ledger(database_url, "budgets", "create", "--team", "research", "--limit", "50",
            "--name", "research-monthly")  # fmt: skip
    created = _ledger(database_url, "budgets", "create", "--team", "research",
                      "--model", "acme-unpriced-9", "--limit", "10", "--name", "acme-cap")  # fmt: skip
    budget_id = created.stdout.split()[2].rstrip(":")
    config = tmp_path / "ledger.toml"
    config.write_text(f'''
database_url = "{database_url}"
journal_dir = "{tmp_path / "journal"}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{fake_upstream.openai_base_url}"
api_key_env = "FAKE_KEY"
''')
    result = _doctor(config, FAKE_KEY=fake_upstream.api_key)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "FAIL" in _row(out, "budgets") and "1 of 2 budgets valid" in _row(out, "budgets")
    bad = _row(out, f"budget {budget_id} acme-cap")
    assert "FAIL" in bad and "acme-unpriced-9" in bad and "no price" in bad
    assert "POST /admin/prices" in bad
    assert "research-monthly" not in out  # a valid budget gets no row of its own
