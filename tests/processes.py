"""Real ``ledger serve`` processes for tests that need several of them (or a kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.fake_upstream import FakeUpstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_provider_config(path: Path, fake: FakeUpstream) -> Path:
    """A TOML config that sends catalog models to the fake provider (key read from the env)."""
    path.write_text(
        f"""
[[providers]]
name = "openai"
kind = "openai"
base_url = "{fake.openai_base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
timeout_s = 30

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{fake.anthropic_base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
timeout_s = 30
""",
        encoding="utf-8",
    )
    return path


class LedgerProcess:
    """``python -m ledger.cli serve`` on a free port, stopped with SIGTERM (or killed)."""

    def __init__(
        self,
        database_url: str,
        *,
        config: Path | None = None,
        admin_key: str = "sk-admin-test-key",
        env: dict[str, str] | None = None,
        log: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key
        self._env = {
            **os.environ,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_ADMIN_KEY": admin_key,
            "LEDGER_SCHEDULER": "off",
            "FAKE_PROVIDER_KEY": "sk-upstream-secret-0123456789",
            **(env or {}),
        }
        self._args = [sys.executable, "-m", "ledger.cli"]
        if config is not None:
            self._args += ["--config", str(config)]
        self._args += ["serve", "--port", str(self.port), "--log-level", log_level]
        self._log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> LedgerProcess:
        output = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self._args, env=self._env, stdout=output, stderr=output)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ledger serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("ledger serve did not become healthy")

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def __enter__(self) -> LedgerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
