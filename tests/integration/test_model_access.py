"""Which models a key may use: [[models]] adds routes, ``allowed_models`` restricts.

One ``[[models]]`` entry used to switch off the whole catalog: after configuring
``gpt-4.1-mini``, ``gpt-4o`` and ``claude-haiku-4-5`` answered 404. Restricting is now
explicit, globally (``allowed_models``), per team and per key, and ``/v1/models`` lists
exactly what the caller may use and what is priced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ledger.config import ModelConfig
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings

# A catalog model of each protocol, a dated snapshot of it, and one outside the patterns.
ALLOWED = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5"}
SNAPSHOT = {"openai": "gpt-4.1-mini-2025-04-14", "anthropic": "claude-haiku-4-5-20251001"}
OUTSIDE = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5"}
PATTERNS = ["gpt-4.1-mini", "claude-haiku-4-5"]
PROTOCOLS = ("openai", "anthropic")


def _call(server: LiveServer, protocol: str, key: str, model: str) -> Any:
    """One request through the official SDK; returns the raw HTTP response."""
    if protocol == "openai":
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=16
        )
    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
    return client.messages.with_raw_response.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )


def _refused(server: LiveServer, protocol: str, key: str, model: str) -> httpx.Response:
    """The 403 the SDK raised for ``model``, checked for the caller's protocol."""
    errors = (openai.PermissionDeniedError, anthropic.PermissionDeniedError)
    with pytest.raises(errors) as raised:
        _call(server, protocol, key, model)
    response = raised.value.response
    assert response.status_code == 403
    body = response.json()
    if protocol == "openai":
        assert body["error"]["code"] == "model_not_allowed"
        assert body["error"]["param"] == "model"
        message = body["error"]["message"]
    else:
        assert body["type"] == "error"
        assert body["error"]["type"] == "permission_error"
        message = body["error"]["message"]
    assert model in message
    return response


def _only_entry(server: LiveServer, response: Any) -> dict[str, Any]:
    request_id = response.headers["x-ledger-request-id"]
    entry = server.entry(request_id)
    assert [e["request_id"] for e in server.entries(request_id=request_id)] == [request_id]
    return entry


def _listed(server: LiveServer, key: str) -> dict[str, set[str]]:
    """``/v1/models`` in both shapes: the OpenAI SDK's list and Anthropic's."""
    openai_ids = {
        m.id for m in openai.OpenAI(base_url=server.openai_base_url, api_key=key).models.list()
    }
    anthropic_ids = {
        m.id for m in anthropic.Anthropic(base_url=server.url, api_key=key).models.list()
    }
    return {"openai": openai_ids, "anthropic": anthropic_ids}


@pytest.fixture
def restricted_gateway(
    request: pytest.FixtureRequest, database_url: str, fake_upstream: FakeUpstream
) -> Iterator[tuple[LiveServer, str]]:
    """A key restricted to PATTERNS at one level: the gateway's setting, its team, or itself."""
    level = request.param
    overrides: dict[str, Any] = {"allowed_models": tuple(PATTERNS)} if level == "gateway" else {}
    with LiveServer(gateway_settings(database_url, fake_upstream, **overrides)) as server:
        team: dict[str, Any] = {"name": "research"}
        key: dict[str, Any] = {"team": "research"}
        if level == "team":
            team["allowed_models"] = PATTERNS
        if level == "key":
            key["allowed_models"] = PATTERNS
        assert server.admin.post("/admin/teams", json=team).status_code == 201
        made = server.admin.post("/admin/keys", json=key)
        assert made.status_code == 201, made.text
        assert made.json()["allowed_models"] == (PATTERNS if level == "key" else None)
        yield server, made.json()["key"]


def test_one_configured_model_leaves_the_catalog_and_its_snapshots_served(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    models = (ModelConfig("gpt-4.1-mini", "openai", "gpt-4.1-mini"),)
    with LiveServer(gateway_settings(database_url, fake_upstream, models=models)) as server:
        key = server.team_key()
        for protocol in PROTOCOLS:
            for model in (ALLOWED[protocol], SNAPSHOT[protocol], OUTSIDE[protocol]):
                response = _call(server, protocol, key, model)
                assert response.http_response.status_code == 200, model
                entry = _only_entry(server, response.http_response)
                assert entry["status"] == "ok"
                assert entry["provider"] == protocol
        listed = _listed(server, key)
        assert {"gpt-4.1-mini", "gpt-4o", "claude-haiku-4-5"} <= listed["openai"]
        assert listed["openai"] == listed["anthropic"]


@pytest.mark.parametrize("restricted_gateway", ["gateway", "team", "key"], indirect=True)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_allowed_models_refuse_a_model_outside_them_with_403_and_one_entry(
    restricted_gateway: tuple[LiveServer, str], protocol: str
) -> None:
    server, key = restricted_gateway
    response = _refused(server, protocol, key, OUTSIDE[protocol])
    entry = _only_entry(server, response)
    assert entry["status"] == "invalid_request"
    assert entry["http_status"] == 403
    assert entry["requested_model"] == OUTSIDE[protocol]
    assert entry["cost_usd"] == "0.000000000"
    assert "not allowed" in entry["error"]

    # The allowed model and its dated snapshot are served.
    for model in (ALLOWED[protocol], SNAPSHOT[protocol]):
        ok = _call(server, protocol, key, model)
        assert ok.http_response.status_code == 200
        assert _only_entry(server, ok.http_response)["status"] == "ok"


@pytest.mark.parametrize("restricted_gateway", ["gateway", "team", "key"], indirect=True)
def test_models_list_exactly_what_the_key_may_use(
    restricted_gateway: tuple[LiveServer, str],
) -> None:
    server, key = restricted_gateway
    listed = _listed(server, key)
    assert listed == {"openai": set(PATTERNS), "anthropic": set(PATTERNS)}


def test_models_list_leaves_out_a_configured_model_without_a_price(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    models = (
        ModelConfig("mystery", "openai", "mystery-x1"),
        ModelConfig("mystery-free", "openai", "mystery-x1", free=True),
    )
    with LiveServer(gateway_settings(database_url, fake_upstream, models=models)) as server:
        key = server.team_key()
        listed = _listed(server, key)["openai"]
        assert "mystery" not in listed  # it would be refused as model_not_priced
        assert {"mystery-free", "gpt-4o", "claude-haiku-4-5"} <= listed


def test_a_team_pattern_and_a_key_pattern_must_both_allow_the_model(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(database_url, fake_upstream, allowed_models=("gpt-*", "claude-*"))
    with LiveServer(settings) as server:
        team = {"name": "research", "allowed_models": ["gpt-4.1*", "claude-haiku-*"]}
        assert server.admin.post("/admin/teams", json=team).status_code == 201
        made = server.admin.post(
            "/admin/keys", json={"team": "research", "allowed_models": ["gpt-*"]}
        )
        key = made.json()["key"]
        # Only what all three lists allow: gpt-4.1, gpt-4.1-mini, gpt-4.1-nano.
        assert _listed(server, key)["openai"] == {"gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"}
        _refused(server, "anthropic", key, "claude-haiku-4-5")  # the key's list says no
        _refused(server, "openai", key, "gpt-4o")  # the team's list says no


@pytest.mark.parametrize("level", ["team", "key"])
def test_changing_allowed_models_takes_effect_on_the_next_request(
    database_url: str, fake_upstream: FakeUpstream, level: str
) -> None:
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        team = server.create_team("research")
        made = server.admin.post("/admin/keys", json={"team": "research"}).json()
        key = made["key"]
        assert _call(server, "openai", key, "gpt-4o").http_response.status_code == 200  # cached

        path = f"/admin/teams/{team['id']}" if level == "team" else f"/admin/keys/{made['id']}"
        changed = server.admin.patch(path, json={"allowed_models": ["gpt-4.1-mini"]})
        assert changed.status_code == 200, changed.text
        assert changed.json()["allowed_models"] == ["gpt-4.1-mini"]
        _refused(server, "openai", key, "gpt-4o")

        lifted = server.admin.patch(path, json={"allowed_models": None})
        assert lifted.status_code == 200, lifted.text
        assert lifted.json()["allowed_models"] is None
        assert _call(server, "openai", key, "gpt-4o").http_response.status_code == 200


def test_a_change_through_another_process_takes_effect_within_the_key_cache_ttl(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    ttl_s = 0.5
    settings = gateway_settings(database_url, fake_upstream, key_cache_ttl_s=ttl_s)
    with LiveServer(settings) as first, LiveServer(settings) as second:
        first.create_team("research")
        made = first.admin.post("/admin/keys", json={"team": "research"}).json()
        assert _call(second, "openai", made["key"], "gpt-4o").http_response.status_code == 200
        changed = first.admin.patch(
            f"/admin/keys/{made['id']}", json={"allowed_models": ["gpt-4.1-mini"]}
        )
        assert changed.status_code == 200
        time.sleep(ttl_s * 2)  # past the TTL: the second process must have let its copy go
        _refused(second, "openai", made["key"], "gpt-4o")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"allowed_models": []}, "at least one pattern"),
        ({"allowed_models": ["gpt-4o, o3"]}, "commas or spaces"),
        ({"allowed_models": [""]}, "not a model name pattern"),
        ({}, "allowed_models"),
    ],
)
def test_allowed_models_that_cannot_be_meant_are_refused_with_400(
    gateway: LiveServer, body: dict[str, Any], message: str
) -> None:
    team = gateway.create_team("research")
    response = gateway.admin.patch(f"/admin/teams/{team['id']}", json=body)
    assert response.status_code == 400, response.text
    assert message in response.text
    created = gateway.admin.post("/admin/keys", json={"team": "research", **body})
    if body:
        assert created.status_code == 400, created.text
    assert (
        gateway.admin.patch("/admin/keys/999999", json={"allowed_models": None}).status_code == 404
    )


def test_a_price_posted_without_provider_takes_it_from_the_models_route(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    models = (ModelConfig("house-model", "anthropic", "claude-haiku-4-5"),)
    with LiveServer(gateway_settings(database_url, fake_upstream, models=models)) as server:
        price = {"input": "0.40", "output": "1.60"}
        for model, provider in (("house-model", "anthropic"), ("gpt-4.1-mini", "openai")):
            made = server.admin.post("/admin/prices", json={"model": model, **price})
            assert made.status_code == 201, made.text
            assert made.json()["provider"] == provider

        # A model no route knows, with two providers configured: which one is ambiguous.
        refused = server.admin.post("/admin/prices", json={"model": "nobody-x1", **price})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "provider"
        assert "'openai', 'anthropic'" in error["message"]
        made = server.admin.post(
            "/admin/prices", json={"model": "nobody-x1", "provider": "openai", **price}
        )
        assert made.status_code == 201, made.text
        # Now priced and routed to the provider it names.
        key = server.team_key()
        assert _call(server, "openai", key, "nobody-x1").http_response.status_code == 200
