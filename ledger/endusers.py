"""Who a request is for: the end user as the ledger stores and budgets match it.

One function decides the stored form, and everything that compares end users (the
gateway, budgets, report filters) goes through it, so a value is grouped the same way
wherever it appears:

- Claude Code's ``metadata.user_id`` names a device, an account and a session. The end
  user is the account (the device when there is no account); the session is kept apart.
- A value longer than its column is shortened to a stable form — its start, "…#" and a
  hash of the whole — so the same long value always lands on the same row, and the whole
  value is kept beside it. Nothing a client can send makes the database refuse the entry.
- NUL (which PostgreSQL text cannot hold) and lone surrogates (which UTF-8 cannot) become
  U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

__all__ = [
    "END_USER_CHARS",
    "FULL_END_USER_CHARS",
    "SESSION_CHARS",
    "EndUser",
    "fit_text",
    "identify_end_user",
]

END_USER_CHARS = 256  # ledger_entries.end_user and budgets.end_user are String(256)
SESSION_CHARS = 128  # ledger_entries.end_user_session
FULL_END_USER_CHARS = 4096  # ledger_entries.end_user_full keeps a shortened value up to this

_HASH_HEX = 16  # 64 bits of sha256: no two users of one organisation share it by chance
_MAX_KEPT = 200  # characters of a shortened value kept as they are, for people to read

# Claude Code before its JSON ids: user_<device hash>_account_<uuid or nothing>_session_<uuid>
_CLAUDE_CODE_LEGACY = re.compile(
    r"^user_(?P<device>[0-9A-Za-z]+)_account_(?P<account>[0-9A-Za-z-]*)"
    r"_session_(?P<session>[0-9A-Za-z-]+)$"
)
_CLAUDE_CODE_JSON_CHARS = 2048  # a longer value is no Claude Code id: not worth parsing


@dataclass(frozen=True, slots=True)
class EndUser:
    """The end user as stored: ``id`` fits its column; ``full`` is set when it was shortened."""

    id: str
    session: str | None = None
    full: str | None = None


def fit_text(value: str, limit: int) -> str:
    """``value`` made storable in a column of ``limit`` characters, the same way every time.

    Short, clean values come back unchanged. A longer one becomes its first characters,
    "…#" and the first hex digits of the sha256 of the whole (cleaned) value.
    """
    value = _clean(value)
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_HEX]
    kept = max(0, min(_MAX_KEPT, limit - len(digest) - 2))
    return f"{value[:kept]}…#{digest}"[:limit]


def identify_end_user(raw: str | None) -> EndUser | None:
    """The end user a client named (header, ``user`` or ``metadata.user_id``), as stored.

    Claude Code's ids, both the JSON ``{"device_id", "account_uuid", "session_id"}`` and
    the older ``user_<device>_account_<uuid>_session_<uuid>``, give the account (or the
    device when the account is empty) and the session; any other value is kept as it is.
    """
    if not raw:
        return None
    parsed = _claude_code(raw)
    if parsed is not None:
        user, session = parsed
    else:
        user, session = raw, None
    stored = fit_text(user, END_USER_CHARS)
    full = fit_text(user, FULL_END_USER_CHARS) if stored != _clean(user) else None
    return EndUser(
        id=stored,
        session=fit_text(session, SESSION_CHARS) if session else None,
        full=full,
    )


def _claude_code(raw: str) -> tuple[str, str | None] | None:
    """(account or device, session) from a Claude Code user id, or None if it is not one."""
    if raw.startswith("{") and len(raw) <= _CLAUDE_CODE_JSON_CHARS:
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        account, device, session = (
            data.get("account_uuid"),
            data.get("device_id"),
            data.get("session_id"),
        )
        user = next((v for v in (account, device) if isinstance(v, str) and v), None)
        if user is None:
            return None
        return user, session if isinstance(session, str) and session else None
    legacy = _CLAUDE_CODE_LEGACY.match(raw)
    if legacy is not None:
        return legacy["account"] or legacy["device"], legacy["session"]
    return None


def _clean(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # lone surrogates: replaced, as a UTF-8 decoder would
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value
