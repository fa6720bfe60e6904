"""A real Ledger server on loopback for tests, plus small helpers to drive it."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from ledger.app import create_app
from ledger.config import ProviderConfig, Settings
from ledger.serving import server_config
from tests.fake_upstream import FakeUpstream

ADMIN_KEY = "sk-admin-test-key"


def gateway_settings(database_url: str, fake: FakeUpstream, **overrides: Any) -> Settings:
    """Settings that send OpenAI and Anthropic catalog models to the fake provider.

    The scheduler is off unless a test turns it on: tests call the budget checks and the
    alert delivery themselves (``check_budgets``, ``deliver_pending``), so that what they
    see does not depend on when a background job happened to run.

    Batches are committed in the server's own process unless a test asks for a writer
    process (``writer_process=True``, the default of ``ledger serve``): a new writer
    process imports for about 0.6 s before it takes its first batch, and every test
    that reads its first entry would wait for it (CI took minutes longer). The same
    transaction runs either way; the writer-process tests, the ``ledger serve`` process
    tests (faults, scale-out) and the servers built on plain ``Settings`` run the default.
    """
    timeout_s = overrides.pop("timeout_s", 5.0)  # the read timeout of both providers
    overrides.setdefault("scheduler", False)
    overrides.setdefault("writer_process", False)
    providers = (
        ProviderConfig(
            name="openai", kind="openai", base_url=fake.openai_base_url, api_key=fake.api_key,
            timeout_s=timeout_s, connect_timeout_s=2.0,
        ),
        ProviderConfig(
            name="anthropic", kind="anthropic", base_url=fake.anthropic_base_url,
            api_key=fake.api_key, timeout_s=timeout_s, connect_timeout_s=2.0,
        ),
    )  # fmt: skip
    return Settings(
        database_url=database_url,
        admin_key=ADMIN_KEY,
        providers=providers,
        **overrides,
    )


class LiveServer:
    """Runs ``create_app(settings)`` under uvicorn in a thread, on an ephemeral port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, announce=False)
        # The same server settings as `ledger serve` (forwarded headers, head deadline).
        config = server_config(
            self.app,
            settings,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self.admin = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {settings.admin_key}"}, timeout=30
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("Ledger did not start")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.admin.close()
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    # -- admin helpers ------------------------------------------------------------------

    def create_team(self, name: str = "research") -> dict[str, Any]:
        response = self.admin.post("/admin/teams", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    def create_key(self, team: str = "research", name: str = "ci-bot") -> str:
        response = self.admin.post("/admin/keys", json={"team": team, "name": name})
        assert response.status_code == 201, response.text
        return response.json()["key"]

    def team_key(self, team: str = "research") -> str:
        """A fresh team (created if needed) and a key for it."""
        teams = {t["name"] for t in self.admin.get("/admin/teams").json()["data"]}
        if team not in teams:
            self.create_team(team)
        return self.create_key(team)

    def entries(self, **params: Any) -> list[dict[str, Any]]:
        response = self.admin.get("/api/usage", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def entry(self, request_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """The ledger entry of one request, waiting for it (streams record after their end)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.admin.get(f"/api/usage/{request_id}")
            if response.status_code == 200:
                return response.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"no ledger entry for {request_id}: {response.text}")
            time.sleep(0.02)

    def wait_for_entries(
        self, count: int, *, timeout: float = 10.0, **params: Any
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            entries = self.entries(**params)
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)
