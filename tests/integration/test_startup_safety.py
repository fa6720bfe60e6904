"""What Ledger does with the files it creates before it serves: private, or a clear stop."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from ledger.config import Settings
from tests.live import LiveServer


def test_the_sqlite_database_holding_the_hash_secret_is_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    # SQLite only: the file (and its -wal and -shm) is what a PostgreSQL install lacks.
    # No LEDGER_SECRET_KEY, so the generated key-hashing secret is stored in the file.
    database = tmp_path / "ledger.db"
    old_umask = os.umask(0o022)  # the usual one, which made it 0644
    try:
        settings = Settings(database_url=f"sqlite+aiosqlite:///{database}", admin_key="sk-x")
        with LiveServer(settings) as server:
            assert httpx.get(server.url + "/readyz").status_code == 200
            files = sorted(tmp_path.glob("ledger.db*"))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()}
    finally:
        os.umask(old_umask)
    assert {"ledger.db", "ledger.db-wal", "ledger.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600), {name: oct(m) for name, m in modes.items()}


def test_serve_with_an_unwritable_journal_directory_stops_with_one_clear_line(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable even for root
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LEDGER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        "LEDGER_JOURNAL_DIR": str(blocker / "journal"),
    }
    result = subprocess.run(
        [sys.executable, "-c", "from ledger.cli import main; main()", "serve", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(blocker / "journal") in lines[0] and "LEDGER_JOURNAL_DIR" in lines[0]
