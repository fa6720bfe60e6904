"""GET /api/usage: filters, pagination, exact money, and what a team key may see."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.live import LiveServer

MINI = "gpt-4.1-mini"
GPT4O = "gpt-4o"
NINE_PLACES = re.compile(r"^-?\d+\.\d{9}$")


def _client(gateway: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)


def _ask(client: openai.OpenAI, model: str, text: str) -> str:
    """Make one request, successful or not, and return its ledger request id."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
    except openai.APIStatusError as error:
        return error.response.headers["x-ledger-request-id"]
    return raw.headers["x-ledger-request-id"]


def _usage(gateway: LiveServer, key: str | None = None, **params: Any) -> httpx.Response:
    """The usage list as the admin sees it, or as ``key`` sees it."""
    if key is None:
        return gateway.admin.get("/api/usage", params=params)
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{gateway.url}/api/usage", params=params, headers=headers, timeout=30)


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["request_id"] for entry in response.json()["data"]]


@pytest.fixture
def traffic(gateway: LiveServer) -> dict[str, Any]:
    """Two teams, three keys and requests of several models and outcomes."""
    research_key = gateway.team_key("research")
    research_key_2 = gateway.create_key("research", "second")
    support_key = gateway.team_key("support")
    keys = {
        (k["team"], k["name"]): k["id"] for k in gateway.admin.get("/admin/keys").json()["data"]
    }
    research = _client(gateway, research_key)
    ids = {
        "r_mini_1": _ask(research, MINI, "first"),
        "r_4o": _ask(research, GPT4O, "second"),
        "r_error": _ask(research, MINI, "fault=http_400"),
        "r_unknown": _ask(research, "no-such-model", "third"),
        "r2_mini": _ask(_client(gateway, research_key_2), MINI, "fourth"),
        "s_mini": _ask(_client(gateway, support_key), MINI, "fifth"),
        "s_4o": _ask(_client(gateway, support_key), GPT4O, "sixth"),
    }
    assert len(gateway.wait_for_entries(len(ids))) == len(ids)
    return {
        "ids": ids,
        "research_key": research_key,
        "support_key": support_key,
        "research_key_id": keys["research", "ci-bot"],
        "research_key_2_id": keys["research", "second"],
    }


def test_admin_sees_every_entry_and_filters_by_team_key_model_status_and_request_id(
    gateway: LiveServer, traffic: dict[str, Any]
) -> None:
    ids = traffic["ids"]
    assert _ids(_usage(gateway)) == list(reversed(ids.values()))  # newest first
    research = {ids[n] for n in ("r_mini_1", "r_4o", "r_error", "r_unknown", "r2_mini")}
    assert set(_ids(_usage(gateway, team="research"))) == research
    assert set(_ids(_usage(gateway, team="support"))) == {ids["s_mini"], ids["s_4o"]}
    assert _ids(_usage(gateway, key_id=traffic["research_key_2_id"])) == [ids["r2_mini"]]
    assert set(_ids(_usage(gateway, model=GPT4O))) == {ids["r_4o"], ids["s_4o"]}
    assert set(_ids(_usage(gateway, model=MINI, team="support"))) == {ids["s_mini"]}
    assert _ids(_usage(gateway, status="upstream_error")) == [ids["r_error"]]
    assert _ids(_usage(gateway, status="invalid_request")) == [ids["r_unknown"]]
    assert len(_ids(_usage(gateway, status="ok"))) == 5
    assert _ids(_usage(gateway, request_id=ids["r_4o"])) == [ids["r_4o"]]
    assert _ids(_usage(gateway, request_id="req_does_not_exist")) == []
    assert _ids(_usage(gateway, model="gpt-nothing")) == []
    # An unknown team is an error, not an empty answer that looks like "no spend".
    assert _usage(gateway, team="nobody").status_code == 404


def test_since_and_until_are_a_half_open_interval_in_any_timezone(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    before = _ask(client, MINI, "before")
    time.sleep(0.05)
    middle = _ask(client, MINI, "middle")
    time.sleep(0.05)
    after = _ask(client, MINI, "after")
    start = datetime.fromisoformat(gateway.entry(middle)["started_at"])
    end = datetime.fromisoformat(gateway.entry(after)["started_at"])
    assert start.utcoffset() == timedelta(0)

    for zone in (
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=8)),
    ):
        since, until = start.astimezone(zone).isoformat(), end.astimezone(zone).isoformat()
        assert _ids(_usage(gateway, since=since, until=until)) == [middle]
        assert _ids(_usage(gateway, since=since)) == [after, middle]
        assert _ids(_usage(gateway, until=until)) == [middle, before]
    zulu = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _ids(_usage(gateway, since=zulu)) == [after, middle]


def test_bad_parameters_and_bad_keys_are_refused_cleanly(gateway: LiveServer) -> None:
    for name in ("since", "until"):
        for value in ("2026-01-01T00:00:00", "2026-01-01", "yesterday", ""):
            response = _usage(gateway, **{name: value})
            assert response.status_code == 400, (name, value, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"cursor": "abc"}):
        assert _usage(gateway, **params).status_code == 400, params

    assert httpx.get(f"{gateway.url}/api/usage").status_code == 401
    wrong = _usage(gateway, "sk-ledger-not-a-key")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"


def test_pagination_visits_every_entry_exactly_once(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    made = [_ask(client, MINI, f"page test {n}") for n in range(7)]
    assert len(gateway.wait_for_entries(7)) == 7

    for limit in (1, 3, 7, 10):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            body = _usage(gateway, **params).json()
            seen += [entry["request_id"] for entry in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert pages < 20
        assert seen == list(reversed(made)), limit
        assert pages == -(-7 // limit)

    # A filter and the cursor together still page through only the matching entries.
    first = _usage(gateway, limit=2, team="research").json()
    second = _usage(gateway, limit=2, team="research", cursor=first["next_cursor"]).json()
    assert [e["request_id"] for e in first["data"] + second["data"]] == made[::-1][:4]


def test_money_is_a_decimal_string_with_nine_places(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    raw = client.chat.completions.with_raw_response.create(
        model=MINI, messages=[{"role": "user", "content": "cached=3 how much?"}]
    )
    usage = raw.parse().usage
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert isinstance(entry["cost_usd"], str)
    assert NINE_PLACES.match(entry["cost_usd"]), entry["cost_usd"]
    for name, amount in entry["cost_breakdown_usd"].items():
        assert isinstance(amount, str) and NINE_PLACES.match(amount), name
    breakdown = {k: Decimal(v) for k, v in entry["cost_breakdown_usd"].items()}
    assert sum(breakdown.values()) == Decimal(entry["cost_usd"])
    # gpt-4.1-mini: $0.40 input, $0.10 cached, $1.60 output per million tokens.
    assert breakdown["input"] == (usage.prompt_tokens - 3) * Decimal("0.40") / 1_000_000
    assert breakdown["cache_read"] == 3 * Decimal("0.10") / 1_000_000
    assert breakdown["output"] == usage.completion_tokens * Decimal("1.60") / 1_000_000


# -- team isolation ---------------------------------------------------------------------


def test_a_team_key_sees_only_its_own_team(gateway: LiveServer, traffic: dict[str, Any]) -> None:
    ids = traffic["ids"]
    support = traffic["support_key"]

    own = _usage(gateway, support)
    assert set(_ids(own)) == {ids["s_mini"], ids["s_4o"]}
    assert {e["team"] for e in own.json()["data"]} == {"support"}
    assert set(_ids(_usage(gateway, support, team="support"))) == {ids["s_mini"], ids["s_4o"]}
    # No filter reaches another team's entries.
    assert _ids(_usage(gateway, support, request_id=ids["r_mini_1"])) == []
    assert _ids(_usage(gateway, support, model=MINI)) == [ids["s_mini"]]
    # Research's key sees research's entries, made by either of its keys.
    assert len(_ids(_usage(gateway, traffic["research_key"]))) == 5

    # Asking for another team by name is forbidden, whether or not it exists.
    for team in ("research", "nobody"):
        response = _usage(gateway, support, team=team)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"
    # So is asking for another team's key (as SECURITY.md says), or for a key id that
    # does not exist: the answer does not tell which ids exist.
    for key_id in (traffic["research_key_id"], 999_999):
        response = _usage(gateway, support, key_id=key_id)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"
    support_key_id = next(
        k["id"] for k in gateway.admin.get("/admin/keys").json()["data"] if k["team"] == "support"
    )
    assert set(_ids(_usage(gateway, support, key_id=support_key_id))) == {
        ids["s_mini"],
        ids["s_4o"],
    }

    # Another team's entry looks exactly like one that does not exist.
    headers = {"authorization": f"Bearer {support}"}
    theirs = httpx.get(f"{gateway.url}/api/usage/{ids['r_mini_1']}", headers=headers)
    missing = httpx.get(f"{gateway.url}/api/usage/req_does_not_exist", headers=headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    mine = httpx.get(f"{gateway.url}/api/usage/{ids['s_mini']}", headers=headers)
    assert mine.status_code == 200
    assert mine.json()["team"] == "support"
    # The admin reads any entry.
    assert gateway.admin.get(f"/api/usage/{ids['r_mini_1']}").json()["team"] == "research"
