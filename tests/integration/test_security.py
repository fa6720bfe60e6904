"""Keys cannot leak, teams cannot read each other, and nothing reaches a provider unaccounted.

Routes are enumerated from the application itself (``create_app(...).routes``), never
hand-listed, so a new route is covered — or fails a test until it is classified.
(That no plaintext key is stored in the database is ``test_admin.py``'s
``test_no_plaintext_key_is_stored_anywhere_in_the_database``.)
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from ledger.admin.identity import Authenticator
from ledger.app import create_app
from ledger.config import ModelConfig, ProviderConfig, Settings
from ledger.http import protocol_for_path
from ledger.observability import JsonFormatter
from tests.fake_upstream import DEFAULT_API_KEY, FakeUpstream
from tests.integration.fault_support import ZERO_USD, ledger_rows
from tests.live import ADMIN_KEY, LiveServer, gateway_settings
from tests.processes import LedgerProcess, write_provider_config

# What each gateway route may do. "billed": reaches the provider only once authenticated
# and within its hard budgets, and is recorded. "free": reaches the provider for a call it
# does not bill (token counting), so a spent budget does not stop it; still authenticated
# and recorded at $0. "local": never reaches the provider. A new route fails the
# enumeration test until it is added here.
GATEWAY_POLICY = {
    "createChatCompletion": "billed",
    "seedChatCompletion": "billed",
    "createMessage": "billed",
    "seedCreateMessage": "billed",
    "countMessageTokens": "free",
    "seedCountMessageTokens": "free",
    "listModels": "local",
    "seedListModels": "local",
    "retrieveModel": "local",
    "createEmbedding": "billed",
    "createCompletion": "billed",
    "createResponse": "billed",
    # Calls about a stored response: nothing is billed, but each is one entry at $0.
    "getResponse": "stored",
    "deleteResponse": "stored",
    "cancelResponse": "stored",
    "listResponseInputItems": "stored",
    "countResponseInputTokens": "stored",
}
HOSTILE = [
    "' OR 1=1 --",
    '"; DROP TABLE ledger_entries; --',
    "1; DELETE FROM teams",
    "%' OR '1'='1",
    "') UNION SELECT key_hash FROM api_keys --",
    "\\",
    "ü🙂\u202e\u2028",
    "x" * 8000,
    "\x00",
    "99999999999999999999",
    "-1",
]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with Litestar's typed parameters, e.g. /api/usage/{request_id:str}
    operation_id: str | None
    tags: tuple[str, ...]


def _routes(app: Litestar) -> list[Route]:
    found = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                operation_id = (
                    handler.operation_id if isinstance(handler.operation_id, str) else None
                )
                found.append(Route(method, route.path, operation_id, tuple(handler.resolve_tags())))
    assert found
    return found


def _fill(path: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"no test value for the path parameter {name!r} of {path}"
        return values[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


def _body(path: str, marker: str) -> dict[str, Any]:
    if protocol_for_path(path) == "anthropic":
        return {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": marker}],
        }
    # Any priced model will do: the fake provider answers every endpoint for any model.
    if path.endswith(("/embeddings", "/responses")):
        return {"model": "gpt-4.1-mini", "input": marker}
    if path.endswith("/v1/completions"):
        return {"model": "gpt-4.1-mini", "prompt": marker}
    return {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": marker}]}


def _upstream_calls(fake: FakeUpstream, marker: str, *, billable_only: bool = False) -> int:
    """Requests the provider received carrying ``marker`` (billable ones: not token counts)."""
    return sum(
        marker.encode() in request.body
        and not (billable_only and request.path.endswith("/count_tokens"))
        for request in fake.requests
    )


def _no_bad_cookie(response: httpx.Response) -> None:
    for cookie in response.headers.get_list("set-cookie"):
        lowered = cookie.lower()
        assert "secure" in lowered and "httponly" in lowered, (response.url, cookie)


# -- two teams ------------------------------------------------------------------------------


@dataclass
class Team:
    name: str
    key: str
    key_id: int
    key_prefix: str
    budget_id: int
    budget_name: str
    request_ids: list[str]


def _team(server: LiveServer, name: str, http: httpx.Client) -> Team:
    server.create_team(name)
    created = server.admin.post("/admin/keys", json={"team": name, "name": f"{name}-key"})
    assert created.status_code == 201, created.text
    key, key_id, prefix = created.json()["key"], created.json()["id"], created.json()["prefix"]
    budget_name = f"{name}-budget-secret"
    budget = server.admin.post(
        "/admin/budgets",
        json={"team": name, "name": budget_name, "limit_usd": "100.00", "mode": "soft"},
    )
    assert budget.status_code == 201, budget.text
    request_ids = []
    for path, user in (("/v1/chat/completions", "u1"), ("/v1/messages", "u2")):
        body = {**_body(path, f"hello from {name}"), "user": f"{name}-{user}"}
        if protocol_for_path(path) == "anthropic":
            body.pop("user")
            body["metadata"] = {"user_id": f"{name}-{user}"}
        response = http.post(
            server.url + path,
            json=body,
            headers={"authorization": f"Bearer {key}", "x-ledger-tags": f"tag-{name}"},
        )
        assert response.status_code == 200, response.text
        request_ids.append(response.headers["x-ledger-request-id"])
    return Team(name, key, key_id, prefix, budget.json()["id"], budget_name, request_ids)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def teams(gateway: LiveServer, http: httpx.Client) -> tuple[Team, Team]:
    run = uuid.uuid4().hex[:6]
    alpha, bravo = _team(gateway, f"alpha{run}", http), _team(gateway, f"bravo{run}", http)
    for team in (alpha, bravo):
        for request_id in team.request_ids:
            gateway.entry(request_id)
    return alpha, bravo


# -- every gateway route is authenticated, budgeted and recorded ------------------------------


def test_no_gateway_route_reaches_the_provider_unauthenticated_unbudgeted_or_unrecorded(
    gateway: LiveServer, fake_upstream: FakeUpstream, http: httpx.Client
) -> None:
    routes = _routes(create_app(gateway.settings, announce=False))
    gateway_routes = [r for r in routes if "gateway" in r.tags]
    assert {r.operation_id for r in gateway_routes} == set(GATEWAY_POLICY), (
        "classify every gateway route in GATEWAY_POLICY"
    )
    # A key whose hard budget is spent, and a key without budgets.
    gateway.create_team("spent")
    spent = gateway.admin.post("/admin/keys", json={"team": "spent"}).json()
    budget = gateway.admin.post(
        "/admin/budgets", json={"key_id": spent["id"], "limit_usd": "0.000000001", "mode": "hard"}
    )
    assert budget.status_code == 201, budget.text
    free_key = gateway.team_key("unlimited")

    def call(route: Route, key: str | None, marker: str) -> httpx.Response:
        headers = {"anthropic-version": "2023-06-01"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        url = gateway.url + _fill(route.path, {"model_id": "gpt-4.1-mini", "response_id": marker})
        if route.method in ("GET", "DELETE"):
            return http.request(route.method, url, headers=headers)
        return http.post(url, json=_body(route.path, marker), headers=headers)

    for route in gateway_routes:
        policy = GATEWAY_POLICY[route.operation_id or ""]
        before = len(gateway.entries())
        for key in (None, "sk-ledger-not-a-key"):
            marker = f"m-{uuid.uuid4().hex}"
            response = call(route, key, marker)
            assert response.status_code == 401, (route, response.text)
            assert _upstream_calls(fake_upstream, marker) == 0, route
        assert len(gateway.entries()) == before, f"{route}: an entry without a key"

        if policy == "stored":
            # Whatever the provider answers about a response id, the call is one $0 entry.
            for key in (spent["key"], free_key):
                response = call(route, key, f"m-{uuid.uuid4().hex}")
                entry = gateway.entry(response.headers["x-ledger-request-id"])
                assert entry["cost_usd"] == ZERO_USD, (route, entry)
            continue

        marker = f"m-{uuid.uuid4().hex}"
        response = call(route, spent["key"], marker)
        # An Anthropic request first asks the provider to count its prompt (free, and the
        # estimate the budget needs); what must not happen is the billable call itself.
        reached = _upstream_calls(fake_upstream, marker, billable_only=True)
        if policy == "billed":
            assert response.status_code == 429, (route, response.text)
            assert "budget_exceeded" in response.text
            assert reached == 0, f"{route} reached the provider over a spent hard budget"
            assert gateway.entry(response.headers["x-ledger-request-id"])["status"] == "blocked"
        elif policy == "free":
            assert response.status_code == 200, (route, response.text)
            entry = gateway.entry(response.headers["x-ledger-request-id"])
            assert entry["cost_usd"] == ZERO_USD
        else:
            assert response.status_code == 200 and reached == 0, route

        marker = f"m-{uuid.uuid4().hex}"
        response = call(route, free_key, marker)
        assert response.status_code == 200, (route, response.text)
        reached = _upstream_calls(fake_upstream, marker)
        if policy == "local":
            assert reached == 0, route
            continue
        # Whatever reached the provider is in the ledger, once.
        assert reached >= 1, route
        entry = gateway.entry(response.headers["x-ledger-request-id"])
        assert entry["status"] == "ok", entry
        _no_bad_cookie(response)


def test_no_route_of_any_kind_forwards_an_unauthenticated_request(
    gateway: LiveServer, fake_upstream: FakeUpstream, http: httpx.Client
) -> None:
    values = {"request_id": "req_x", "month": "2020-01", "budget_id": "1", "key_id": "1"}
    values |= {"team_id": "1"}
    values |= {"file_path": "dashboard.css", "path": "openapi.json"}
    values |= {"model_id": "gpt-4.1-mini", "rest": "files", "response_id": "resp_x"}
    for route in _routes(create_app(gateway.settings, announce=False)):
        marker = f"m-{uuid.uuid4().hex}"
        response = http.request(
            route.method,
            gateway.url + _fill(route.path, values),
            json=_body(route.path, marker) if route.method != "GET" else None,
        )
        assert response.status_code < 500, (route, response.text)
        assert _upstream_calls(fake_upstream, marker) == 0, route
        _no_bad_cookie(response)
    assert gateway.entries() == []


# -- teams cannot read each other -------------------------------------------------------------


def test_team_keys_see_only_their_own_team_on_every_read_route(
    gateway: LiveServer, teams: tuple[Team, Team], http: httpx.Client
) -> None:
    alpha, bravo = teams
    month = datetime.now(UTC).strftime("%Y-%m")
    values = {"request_id": bravo.request_ids[0], "month": month}
    values |= {"budget_id": str(bravo.budget_id), "key_id": str(bravo.key_id)}
    bravo_marks = [bravo.name, bravo.key_prefix, bravo.budget_name, *bravo.request_ids]
    reads = [
        r
        for r in _routes(create_app(gateway.settings, announce=False))
        if r.method == "GET" and r.path.startswith(("/api/", "/admin/"))
    ]
    assert any(r.path.startswith("/api/reports/") for r in reads)

    def get(key: str, route: Route, **params: Any) -> httpx.Response:
        return http.get(
            gateway.url + _fill(route.path, values),
            params=params,
            headers={"authorization": f"Bearer {key}"},
        )

    schema = gateway.admin.get("/schema/openapi.json").json()
    parameters = {
        operation["operationId"]: {p["name"] for p in operation.get("parameters", [])}
        for item in schema["paths"].values()
        for operation in item.values()
    }
    seen_own = False
    for route in reads:
        if route.path.startswith("/admin/"):
            assert get(alpha.key, route).status_code == 403, route
            continue
        variants: list[dict[str, Any]] = [{}, {"format": "csv"}, {"team": bravo.name}]
        variants += [{"key_id": bravo.key_id}, {"user": f"{bravo.name}-u1"}]
        variants += [{"tag": f"tag-{bravo.name}"}, {"group_by": "team"}]
        for params in variants:
            response = get(alpha.key, route, **params)
            assert response.status_code in (200, 400, 403, 404), (route, params, response.text)
            text = response.content.decode("utf-8", errors="replace")
            for mark in bravo_marks:
                if mark not in str(response.url):  # a 404 may repeat what was asked for
                    assert mark not in text, (route, params, mark)
            takes_team = "team" in parameters.get(route.operation_id or "", set())
            if takes_team and params.get("team") == bravo.name:
                assert response.status_code in (403, 404), (route, params)
            seen_own = seen_own or alpha.request_ids[0] in text
        # The same route does show the other team to its own key (the check means something).
        if route.path == "/api/usage":
            assert bravo.request_ids[0] in get(bravo.key, route).text
    assert seen_own


def test_metrics_do_not_show_team_spend_without_a_key(
    gateway: LiveServer, teams: tuple[Team, Team], http: httpx.Client
) -> None:
    _, bravo = teams
    response = http.get(gateway.url + "/metrics", headers={"authorization": "Bearer nobody"})
    assert response.status_code in (401, 403) or bravo.name not in response.text


def test_metrics_need_the_metrics_token_or_the_admin_key(
    database_url: str, fake_upstream: FakeUpstream, http: httpx.Client
) -> None:
    token = "metrics-token-for-the-test"
    with LiveServer(gateway_settings(database_url, fake_upstream, metrics_token=token)) as server:
        team_key = server.team_key()
        url = server.url + "/metrics"
        assert http.get(url).status_code == 401  # SECURITY.md: not a no-key route
        for refused in (team_key, "nobody"):
            assert http.get(url, headers={"authorization": f"Bearer {refused}"}).status_code == 401
        for allowed in (token, ADMIN_KEY):
            response = http.get(url, headers={"authorization": f"Bearer {allowed}"})
            assert response.status_code == 200, response.text
            assert "ledger_" in response.text


def test_admin_routes_refuse_team_keys(
    gateway: LiveServer, teams: tuple[Team, Team], http: httpx.Client
) -> None:
    alpha, bravo = teams
    values = {"budget_id": str(bravo.budget_id), "key_id": str(bravo.key_id), "month": "2020-01"}
    listed = gateway.admin.get("/admin/teams").json()["data"]
    values["team_id"] = str(next(t["id"] for t in listed if t["name"] == bravo.name))
    bodies: dict[str, Any] = {
        "updateTeam": {"allowed_models": ["nothing-at-all"]},
        "updateKey": {"allowed_models": ["nothing-at-all"]},
        "createTeam": {"name": "intruders"},
        "createKey": {"team": alpha.name},
        "createBudget": {"team": alpha.name, "limit_usd": "1.00"},
        "updateBudget": {"limit_usd": "1000000.00"},
        "createPrice": {"model": "gpt-4.1-mini", "input": "0", "output": "0"},
    }
    admin_routes = [
        r
        for r in _routes(create_app(gateway.settings, announce=False))
        if r.path.startswith("/admin")
    ]
    assert len(admin_routes) >= 10
    for route in admin_routes:
        response = http.request(
            route.method,
            gateway.url + _fill(route.path, values),
            json=bodies.get(route.operation_id or "")
            if route.method in ("POST", "PATCH")
            else None,
            headers={"authorization": f"Bearer {alpha.key}"},
        )
        assert response.status_code == 403, (route, response.text)
    # Nothing changed: bravo's key still works and its budget is as it was.
    assert gateway.admin.get(f"/admin/budgets/{bravo.budget_id}").json()["limit_usd"] == (
        "100.000000000"
    )
    assert "intruders" not in gateway.admin.get("/admin/teams").text
    assert "nothing-at-all" not in gateway.admin.get("/admin/teams").text
    assert "nothing-at-all" not in gateway.admin.get("/admin/keys").text


# -- the provider key never leaks -------------------------------------------------------------


class _Capture(logging.Handler):
    """Every log record, formatted as Ledger would write it (JSON, with tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._json = JsonFormatter()
        self._text = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("openai", "anthropic", "httpx", "httpx2", "httpcore"):
            return  # the test's own clients
        self.lines.append(self._json.format(record))
        self.lines.append(self._text.format(record))


FAULTS = [
    "hello",
    "fault=http_400",
    "fault=http_429",
    "fault=http_500",
    "fault=stall stall_s=2",
    "fault=reset reply_words=30",
    "fault=malformed_json",
    "fault=no_usage",
    "usage=absurd",
    # The provider quotes the key it was sent: in a 401, and in an error event mid-stream.
    "fault=echo_key",
    "fault=http_403",
]
STREAM_FAULTS = ["hello", "fault=cut_stream reply_words=30", "fault=stall_stream stall_s=2"]
STREAM_FAULTS += ["fault=malformed_sse reply_words=20", "fault=reset reply_words=30"]
STREAM_FAULTS += ["fault=echo_key", "fault=stream_error_key reply_words=20"]


def _exercise(
    url: str, key: str, http: httpx.Client, models: dict[str, str], *, stalls: bool = True
) -> list[str]:
    """Requests of every kind, good and bad; everything the client saw, as text."""
    seen = []
    texts = FAULTS + [f"{t} stream" for t in STREAM_FAULTS]
    if not stalls:
        texts = [t for t in texts if "stall" not in t]
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"):
        protocol = protocol_for_path(path)
        for text in texts:
            body = _body(path, text.removesuffix(" stream"))
            body["model"] = models[protocol]
            if text.endswith(" stream") and "count_tokens" not in path:
                body["stream"] = True
            headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
            try:
                with http.stream("POST", url + path, json=body, headers=headers) as response:
                    seen.append(str(response.headers) + response.read().decode(errors="replace"))
            except httpx.HTTPError as error:  # a stream Ledger had to cut
                seen.append(repr(error))
    return seen


def test_the_provider_key_never_appears_in_responses_logs_or_the_ledger(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path, http: httpx.Client
) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused
    providers = [
        ProviderConfig(
            name=kind,
            kind=kind,
            base_url=url,
            api_key=DEFAULT_API_KEY,
            timeout_s=0.5,
            connect_timeout_s=0.5,
        )
        for kind, url in (
            ("openai", fake_upstream.openai_base_url),
            ("anthropic", fake_upstream.anthropic_base_url),
        )
    ] + [
        ProviderConfig(name=f"down-{kind}", kind=kind, base_url=closed, api_key=DEFAULT_API_KEY)
        for kind in ("openai", "anthropic")
    ]
    models = [
        ModelConfig("gpt-4.1-mini", "openai", "gpt-4.1-mini"),
        ModelConfig("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ModelConfig("down-gpt", "down-openai", "gpt-4.1-mini"),
        ModelConfig("down-claude", "down-anthropic", "claude-sonnet-4-5"),
    ]
    settings = Settings(
        database_url=database_url, admin_key=ADMIN_KEY, providers=tuple(providers),
        models=tuple(models), scheduler=False, journal_dir=str(tmp_path / "journal"),
        log_level="DEBUG",
        # SQL is logged by the process that runs it: committing here, every INSERT reaches
        # the capture. A writer process is handed the same entries, checked below as
        # they are in the database and in the journal.
        writer_process=False,
    )  # fmt: skip
    capture = _Capture()
    root = logging.getLogger()
    # Every SQL statement with its parameters, and the HTTP client's own debug lines.
    talkative = [logging.getLogger(name) for name in ("sqlalchemy.engine", "aiohttp")]
    levels = [logger.level for logger in (root, *talkative)]
    root.addHandler(capture)
    for logger in (root, *talkative):
        logger.setLevel(logging.DEBUG)
    try:
        with LiveServer(settings) as server:
            key = server.team_key()
            seen = _exercise(
                server.url, key, http, {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5"}
            )
            seen += _exercise(
                server.url, key, http, {"openai": "down-gpt", "anthropic": "down-claude"}
            )
            entries = server.wait_for_entries(len(seen), timeout=20)
            assert len(entries) == len(seen)
    finally:
        root.removeHandler(capture)
        for logger, level in zip((root, *talkative), levels, strict=True):
            logger.setLevel(level)

    assert any("INSERT INTO ledger_entries" in line for line in capture.lines), "no SQL logged"
    assert any("upstream" in s or "Provider" in s for s in seen)
    # The provider did echo its key; what Ledger passed on, stored and logged has it cut out.
    assert any("Incorrect API key provided: [REDACTED]" in s for s in seen)
    assert any("[REDACTED]" in str(entry["error"]) for entry in entries)
    places = {
        "responses": "\n".join(seen),
        "log lines": "\n".join(capture.lines),
        "ledger (API)": str(entries),
        "ledger (database)": str(ledger_rows(database_url)),
        "journal": "\n".join(
            p.read_text(errors="replace") for p in (tmp_path / "journal").rglob("*") if p.is_file()
        ),
    }
    for place, text in places.items():
        assert DEFAULT_API_KEY not in text, f"the provider key is in the {place}"
        assert key not in text or place == "responses", f"a client key is in the {place}"
        assert ADMIN_KEY not in text, f"the admin key is in the {place}"


def test_ledger_serve_logs_at_debug_never_hold_a_key(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path, http: httpx.Client
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    log = tmp_path / "serve.log"
    process = LedgerProcess(database_url, config=config, log=log)
    process._args[process._args.index("warning")] = "debug"  # the most talkative it gets
    with process:
        admin = {"authorization": f"Bearer {process.admin_key}"}
        assert http.post(process.url + "/admin/teams", json={"name": "t"}, headers=admin).is_success
        key = http.post(process.url + "/admin/keys", json={"team": "t"}, headers=admin).json()[
            "key"
        ]
        models = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5"}
        # No stalls: this provider's read timeout is 30 s (the in-process test has them).
        seen = _exercise(process.url, key, http, models, stalls=False)
    text = log.read_text(errors="replace")
    assert "DEBUG" in text.upper() and len(text) > 1000
    for secret in (DEFAULT_API_KEY, key, process.admin_key):
        assert secret not in text
        assert DEFAULT_API_KEY not in "\n".join(seen)


# -- failed authentication is throttled per client ---------------------------------------------


def test_repeated_bad_keys_from_one_address_get_429_while_valid_keys_are_still_served(
    gateway: LiveServer,
) -> None:
    key = gateway.team_key()
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
    guesser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=10)

    def models(client: httpx.Client, with_key: str) -> httpx.Response:
        return client.get(
            gateway.url + "/v1/models", headers={"authorization": f"Bearer {with_key}"}
        )

    try:
        assert models(other, key).status_code == 200
        for n in range(30):
            response = models(guesser, f"sk-ledger-guess-{n}")
            assert response.status_code == 401, (n, response.text)
        refused = models(guesser, "sk-ledger-guess-31")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        # Only failures are throttled: a valid key from that address is served (an address
        # may be shared, and a throttle that refused good keys would let anyone sharing it
        # lock them out); the same goes for the report API. A wrong key there still waits.
        assert models(guesser, key).status_code == 200
        usage = guesser.get(gateway.url + "/api/usage", headers={"authorization": f"Bearer {key}"})
        assert usage.status_code == 200
        assert models(guesser, "sk-ledger-guess-32").status_code == 429
        # Another client is not affected, with a good key or a bad one.
        assert models(other, key).status_code == 200
        assert models(other, "sk-ledger-wrong").status_code == 401
        usage = other.get(gateway.url + "/api/usage", headers={"authorization": f"Bearer {key}"})
        assert usage.status_code == 200
    finally:
        other.close()
        guesser.close()


def test_admin_key_check_compares_every_known_hash_without_an_early_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = b"s" * 32
    keys = ["sk-admin-one", "sk-admin-two", "sk-admin-three"]
    auth = Authenticator(None, secret, {Authenticator(None, secret, set()).hash(k) for k in keys})  # type: ignore[arg-type]
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("ledger.admin.identity.hmac.compare_digest", counting)
    for candidate, expected in ((keys[0], True), (keys[2], True), ("sk-admin-wrong", False)):
        calls.clear()
        assert auth.is_admin_key(candidate) is expected
        # compare_digest is constant-time per comparison; every hash is compared each time.
        assert len(calls) == len(keys), candidate


# -- hostile filter values ------------------------------------------------------------------


def test_hostile_filter_and_sort_values_never_reach_sql(
    gateway: LiveServer, teams: tuple[Team, Team], http: httpx.Client
) -> None:
    schema = gateway.admin.get("/schema/openapi.json")
    assert schema.status_code == 200, schema.text
    operations = []
    for path, item in schema.json()["paths"].items():
        if path == "/api/usage" or path.startswith("/api/reports/"):
            get = item.get("get")
            if get is not None:
                operations.append((path, get.get("parameters", [])))
    assert len(operations) >= 4
    before = len(gateway.entries())
    month = datetime.now(UTC).strftime("%Y-%m")
    for path, parameters in operations:
        for parameter in parameters:
            for value in HOSTILE:
                if (parameter["name"], value) in KNOWN_500:
                    continue
                if parameter["in"] == "path":
                    url = path.replace("{" + parameter["name"] + "}", quote(value, safe=""))
                    params: dict[str, str] = {}
                else:
                    url = re.sub(r"\{\w+\}", month, path)
                    params = {parameter["name"]: value}
                response = http.get(gateway.url + url, params=params, headers=gateway.admin.headers)
                what = (path, parameter["name"], value[:40], response.text[:200])
                assert response.status_code < 500, what
                if response.status_code == 200 and path == "/api/usage":
                    # A hostile filter matches nothing; it never widens the result.
                    assert len(response.json()["data"]) <= before, (parameter["name"], value[:40])
    for value in HOSTILE:
        response = http.get(
            gateway.url + "/api/usage/" + quote(value, safe=""),
            headers=gateway.admin.headers,
        )
        assert response.status_code in (404, 400), response.text
    # The tables are intact.
    assert len(gateway.entries()) == before
    assert {t["name"] for t in gateway.admin.get("/admin/teams").json()["data"]} >= {
        teams[0].name,
        teams[1].name,
    }


LONG_NAME = HOSTILE[7]
# Found by the sweep above; skipped there, pinned below until fixed.
KNOWN_500 = {("timezone", LONG_NAME)}


def test_a_time_zone_name_too_long_is_refused_with_400(gateway: LiveServer) -> None:
    response = gateway.admin.get("/api/reports/spend", params={"timezone": LONG_NAME})
    assert response.status_code == 400, response.text[:200]


# -- the dashboard ----------------------------------------------------------------------------


def test_dashboard_forbids_framing_and_sets_no_cookie(
    gateway: LiveServer, http: httpx.Client
) -> None:
    response = http.get(gateway.url + "/dashboard")
    if response.status_code == 404:
        pytest.skip("no dashboard in this build")
    assert response.status_code == 200
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy or response.headers.get("x-frame-options") == "DENY"
    _no_bad_cookie(response)
    for asset in ("dashboard.js", "dashboard.css"):
        _no_bad_cookie(http.get(gateway.url + "/dashboard/static/" + asset))


def test_a_cookie_one_request_got_from_the_provider_never_rides_on_another(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    # By host name: HTTP clients keep no cookies for a bare IP address, real providers have names.
    settings = gateway_settings(database_url, fake_upstream)
    by_name = tuple(
        replace(p, base_url=p.base_url.replace("127.0.0.1", "localhost"))
        for p in settings.providers
    )
    with LiveServer(replace(settings, providers=by_name)) as server:
        server.create_team("research")
        server.create_team("ops")
        first = openai.OpenAI(
            base_url=server.openai_base_url, api_key=server.team_key("research"), max_retries=0
        )
        second = openai.OpenAI(
            base_url=server.openai_base_url, api_key=server.team_key("ops"), max_retries=0
        )
        first.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "set_cookie first"}]
        )
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        second.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": marker}]
        )
    [sent] = [r for r in fake_upstream.requests if marker in str(r.json)]
    assert "cookie" not in sent.headers
