"""The admin API: teams, keys, revocation, who may call it, and keys that never reach disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import MetaData, select

from ledger.db.engine import create_engine
from tests.live import ADMIN_KEY, LiveServer

MODEL = "gpt-4.1-mini"
MESSAGES = [{"role": "user", "content": "hello from the admin tests"}]


def _client(gateway: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)


def _assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    return error


# -- teams ------------------------------------------------------------------------------


def test_teams_are_created_and_listed_and_a_duplicate_name_is_a_conflict(
    gateway: LiveServer,
) -> None:
    created = gateway.admin.post(
        "/admin/teams",
        json={"name": "research", "cost_centre": "CC-42", "markup_percent": "12.5"},
    )
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["name"] == "research"
    assert team["cost_centre"] == "CC-42"
    assert team["markup_percent"] == "12.50"
    gateway.create_team("support")

    listed = gateway.admin.get("/admin/teams")
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["data"]] == ["research", "support"]
    assert listed.json()["data"][0]["id"] == team["id"]

    duplicate = gateway.admin.post("/admin/teams", json={"name": "research"})
    error = _assert_openai_error(duplicate, 409)
    assert "research" in error["message"]
    assert len(gateway.admin.get("/admin/teams").json()["data"]) == 2


# -- keys -------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_and_lists_show_only_its_prefix(gateway: LiveServer) -> None:
    gateway.create_team("research")
    created = gateway.admin.post("/admin/keys", json={"team": "research", "name": "ci-bot"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("sk-ledger-")
    assert len(key) > 40
    assert key.startswith(body["prefix"])
    assert len(body["prefix"]) < len(key) - 30
    assert body["team"] == "research"
    assert body["name"] == "ci-bot"
    assert body["revoked_at"] is None

    listed = gateway.admin.get("/admin/keys")
    assert listed.status_code == 200
    (row,) = listed.json()["data"]
    assert row["id"] == body["id"]
    assert row["prefix"] == body["prefix"]
    assert "key" not in row
    assert key not in listed.text
    assert key not in gateway.admin.get("/admin/teams").text

    # The key works at once.
    completion = _client(gateway, key).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content


def test_a_key_for_an_unknown_team_is_not_found(gateway: LiveServer) -> None:
    response = gateway.admin.post("/admin/keys", json={"team": "nobody"})
    error = _assert_openai_error(response, 404)
    assert "nobody" in error["message"]


def test_a_revoked_key_is_refused_on_the_very_next_request(gateway: LiveServer) -> None:
    gateway.create_team("research")
    created = gateway.admin.post("/admin/keys", json={"team": "research"}).json()
    other_key = gateway.create_key("research", "other")
    client = _client(gateway, created["key"])
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # authenticated and cached

    revoked = gateway.admin.delete(f"/admin/keys/{created['id']}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    # The listing says so, the refused request left no entry, and other keys still work.
    (row,) = [
        k for k in gateway.admin.get("/admin/keys").json()["data"] if k["id"] == created["id"]
    ]
    assert row["revoked_at"] is not None
    assert len(gateway.entries()) == 1
    _client(gateway, other_key).chat.completions.create(model=MODEL, messages=MESSAGES)

    # Revoking twice is harmless; an unknown id is not found.
    assert gateway.admin.delete(f"/admin/keys/{created['id']}").status_code == 200
    _assert_openai_error(gateway.admin.delete("/admin/keys/999999"), 404)


# -- who may call the admin API ---------------------------------------------------------


ADMIN_CALLS = [
    ("GET", "/admin/teams", None),
    ("POST", "/admin/teams", {"name": "intruders"}),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"team": "research"}),
    ("DELETE", "/admin/keys/1", None),
    ("GET", "/admin/prices", None),
    ("POST", "/admin/prices", {"model": MODEL, "provider": "openai", "input": "0", "output": "0"}),
]


def test_admin_routes_refuse_team_keys_and_missing_or_wrong_keys(gateway: LiveServer) -> None:
    team_key = gateway.team_key("research")
    for method, path, body in ADMIN_CALLS:
        for headers, status in (
            ({"authorization": f"Bearer {team_key}"}, 403),
            ({"x-api-key": team_key}, 403),
            ({}, 401),
            ({"authorization": "Bearer sk-ledger-admin-not-the-key"}, 401),
            ({"authorization": f"Bearer {ADMIN_KEY}x"}, 401),
            ({"authorization": f"Basic {ADMIN_KEY}"}, 401),
        ):
            response = httpx.request(
                method, gateway.url + path, json=body, headers=headers, timeout=10
            )
            error = _assert_openai_error(response, status)
            assert error["code"] == ("permission_denied" if status == 403 else "invalid_api_key")
    # Nothing was changed by the refused calls.
    assert [t["name"] for t in gateway.admin.get("/admin/teams").json()["data"]] == ["research"]
    assert all(k["revoked_at"] is None for k in gateway.admin.get("/admin/keys").json()["data"])


def test_the_admin_key_cannot_make_model_requests(gateway: LiveServer) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        _client(gateway, ADMIN_KEY).chat.completions.create(model=MODEL, messages=MESSAGES)


# -- validation -------------------------------------------------------------------------


MALFORMED = [
    ("/admin/teams", {"name": "research", "colour": "blue"}),
    ("/admin/teams", {}),
    ("/admin/teams", {"cost_centre": "CC-1"}),
    ("/admin/teams", {"name": 42}),
    ("/admin/teams", {"name": ""}),
    ("/admin/teams", {"name": "   "}),
    ("/admin/teams", {"name": "x" * 101}),
    ("/admin/teams", {"name": "ops", "cost_centre": "c" * 101}),
    ("/admin/teams", {"name": "ops", "markup_percent": "lots"}),
    ("/admin/teams", {"name": "ops", "markup_percent": "1.234"}),
    ("/admin/teams", {"name": "ops", "markup_percent": "-5"}),
    ("/admin/teams", {"name": "ops", "markup_percent": 5}),
    ("/admin/teams", ["research"]),
    ("/admin/teams", None),
    ("/admin/keys", {}),
    ("/admin/keys", {"team": "research", "scopes": ["all"]}),
    ("/admin/keys", {"team": "research", "name": "n" * 101}),
    ("/admin/keys", {"team": None}),
    ("/admin/keys", "research"),
]


def test_malformed_admin_requests_are_400_not_500(gateway: LiveServer) -> None:
    gateway.create_team("research")
    for path, body in MALFORMED:
        error = _assert_openai_error(gateway.admin.post(path, json=body), 400)
        assert error["type"] == "invalid_request_error", (path, body)
    assert [t["name"] for t in gateway.admin.get("/admin/teams").json()["data"]] == ["research"]
    assert gateway.admin.get("/admin/keys").json()["data"] == []


def test_a_body_that_is_not_json_is_400(gateway: LiveServer) -> None:
    response = gateway.admin.post(
        "/admin/teams", content=b"{name: research", headers={"content-type": "application/json"}
    )
    _assert_openai_error(response, 400)


# -- no plaintext key anywhere in the database ------------------------------------------


async def _every_value(database_url: str) -> list[Any]:
    """Every value of every column of every table actually in the database."""
    engine = create_engine(database_url, null_pool=True)
    values: list[Any] = []
    try:
        async with engine.connect() as connection:
            reflected = MetaData()
            await connection.run_sync(reflected.reflect)
            assert {"teams", "api_keys", "admin_credentials", "ledger_entries"} <= set(
                reflected.tables
            )
            for table in reflected.sorted_tables:
                for row in (await connection.execute(select(table))).all():
                    values.extend(row)
    finally:
        await engine.dispose()
    return values


def test_no_plaintext_key_is_stored_anywhere_in_the_database(
    gateway: LiveServer, database_url: str, tmp_path: Path
) -> None:
    gateway.create_team("research")
    keys = [gateway.create_key("research", f"key-{n}") for n in range(3)]
    revoked = gateway.admin.get("/admin/keys").json()["data"][2]["id"]
    # Requests of every kind: headers, the seed route's key in the body, errors, a revoked key.
    client = _client(gateway, keys[0])
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fault=http_400"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    seed = httpx.post(
        gateway.url + "/api/v7/llm/chat/completions",
        json={"model_id": MODEL, "key": keys[1], "messages": MESSAGES},
    )
    assert seed.status_code == 200, seed.text
    gateway.admin.delete(f"/admin/keys/{revoked}")
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, keys[2]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(gateway.wait_for_entries(5)) == 5

    secrets = [*keys, ADMIN_KEY]
    # The random part of a client key beyond its display prefix must not appear either.
    secret_tails = [key[len("sk-ledger-") + 6 :] for key in keys]
    stored = asyncio.run(_every_value(database_url))
    assert stored, "the dump read nothing"
    text = "\n".join(map(str, stored))
    for secret in (*secrets, *secret_tails):
        assert secret not in text

    if database_url.startswith("sqlite"):
        files = sorted(p for p in tmp_path.rglob("ledger.db*") if p.is_file())
        files += sorted(p for p in tmp_path.rglob("journal-*.jsonl") if p.is_file())
        assert tmp_path / "ledger.db" in files
        for path in files:  # the database, its WAL, shared-memory index and journal
            data = path.read_bytes()
            for secret in (*secrets, *secret_tails):
                assert secret.encode() not in data, path.name
