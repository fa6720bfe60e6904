"""Who a request is for: Claude Code's ids, over-long names, and what the journal keeps."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.db.journal import Journal
from ledger.db.ledger import LedgerEntry, new_request_id
from ledger.endusers import EndUser, fit_text, identify_end_user

DEVICE = "4f9c" * 16
ACCOUNT = "0b9ba1a4-2f3e-4c8e-9d1a-7a6b5c4d3e2f"
SESSION = "6d1e5f0a-8b7c-4a3d-9e2f-1c0b9a8d7e6f"


def _json_id(account: str = ACCOUNT, device: str = DEVICE, session: str = SESSION) -> str:
    return json.dumps({"device_id": device, "account_uuid": account, "session_id": session})


@pytest.mark.parametrize(
    ("sent", "end_user"),
    [
        (_json_id(), EndUser(ACCOUNT, SESSION)),
        (_json_id(account=""), EndUser(DEVICE, SESSION)),  # no account: the device
        (f"user_{DEVICE}_account_{ACCOUNT}_session_{SESSION}", EndUser(ACCOUNT, SESSION)),
        (f"user_{DEVICE}_account__session_{SESSION}", EndUser(DEVICE, SESSION)),
    ],
    ids=["json", "json-without-account", "legacy", "legacy-without-account"],
)
def test_a_claude_code_id_names_its_account_or_device_and_its_session(
    sent: str, end_user: EndUser
) -> None:
    assert identify_end_user(sent) == end_user


@pytest.mark.parametrize(
    "sent",
    [
        "alice@example.com",
        '{"team": "research"}',  # JSON, but no Claude Code id
        json.dumps({"device_id": "", "account_uuid": "", "session_id": SESSION}),
        "[1, 2]",
        "{not json",
        f"user_{DEVICE}_account_{ACCOUNT}",  # no session: not the legacy form
    ],
)
def test_an_unrecognised_end_user_is_kept_as_it_is(sent: str) -> None:
    assert identify_end_user(sent) == EndUser(sent)


def test_no_end_user_is_none() -> None:
    assert identify_end_user(None) is None
    assert identify_end_user("") is None


def test_a_long_end_user_is_stored_shortened_the_same_way_every_time() -> None:
    long = "team-a/" + "x" * 300
    other = "team-a/" + "x" * 299 + "y"  # the same first 200 characters
    first, again, different = (identify_end_user(v) for v in (long, long, other))
    assert first is not None and again is not None and different is not None
    digest = hashlib.sha256(long.encode()).hexdigest()[:16]
    assert first.id == long[:200] + "…#" + digest and len(first.id) <= 256
    assert first == again
    assert different.id != first.id  # the hash tells them apart
    assert first.full == long
    assert identify_end_user(first.id) == EndUser(first.id)  # a stored name is its own form


def test_fitting_replaces_what_postgresql_text_cannot_hold() -> None:
    assert fit_text("a\x00b", 64) == "a\ufffdb"
    assert fit_text("a\ud800b", 64) == "a\ufffdb"  # a lone surrogate
    assert fit_text("smile \ud83d\ude00", 64) == "smile \U0001f600"  # a pair is one character
    assert fit_text("short", 64) == "short"
    fitted = fit_text("p" * 100, 64)
    assert len(fitted) == 64 and fitted.startswith("p" * 46 + "…#")


def test_every_text_column_of_an_entry_fits_even_if_the_gateway_missed_one() -> None:
    entry = LedgerEntry(
        request_id=new_request_id(),
        started_at=datetime.now(UTC),
        endpoint="chat.completions",
        requested_model="m" * 300,
        served_model="s\x00" * 150,
        provider="p" * 100,
        end_user="u" * 300,
        end_user_session="z" * 200,
    )
    row = entry.as_row()
    lengths = {name: len(row[name]) for name in ("requested_model", "served_model", "provider")}
    assert lengths == {"requested_model": 200, "served_model": 200, "provider": 64}
    assert "\x00" not in row["served_model"]
    assert (len(row["end_user"]), len(row["end_user_session"])) == (218, 128)


@pytest.mark.anyio
async def test_the_journal_keeps_the_session_and_whole_end_user_of_a_request_in_flight(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, "worker")
    journal.open()
    entry = LedgerEntry(
        request_id=new_request_id(), started_at=datetime.now(UTC), endpoint="messages"
    )
    journal.started(entry)
    entry.end_user, entry.end_user_session, entry.end_user_full = "acct", SESSION, None
    journal.forwarding(entry, prompt_cost=1000)
    journal.close()

    (interrupted,) = Journal(tmp_path, "successor").take_over_orphans().interrupted
    assert (interrupted.end_user, interrupted.end_user_session) == ("acct", SESSION)

    journal = Journal(tmp_path, "worker")
    journal.open()
    long = "y" * 300
    final = LedgerEntry(
        request_id=new_request_id(),
        started_at=datetime.now(UTC),
        endpoint="messages",
        end_user=fit_text(long, 256),
        end_user_full=long,
        end_user_session=SESSION,
        status="ok",
    )
    journal.started(final)
    journal.pending([final])
    journal.close()
    (pending,) = Journal(tmp_path, "successor").take_over_orphans().pending
    assert (pending.end_user, pending.end_user_full, pending.end_user_session) == (
        fit_text(long, 256),
        long,
        SESSION,
    )
