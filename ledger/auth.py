"""Litestar dependencies that turn request headers into a :class:`Principal`."""

from __future__ import annotations

from typing import Any

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger.admin.identity import Authenticator, Principal
from ledger.errors import PermissionDenied
from ledger.http import client_address, credential_from_headers


async def read_your_writes(request: Request[Any, Any, Any]) -> None:
    """Before a read of the ledger: let every entry acknowledged so far reach the database.

    Entries are acknowledged once journaled and committed a moment later; this makes a
    read that follows a response see that response's entry.
    """
    services = request.app.state.get("services")
    if services is not None:
        await services.writer.flush()


def provide_read_sessions(
    read_sessions: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    """Sessions for read-only routes: the reports replica when one is configured."""
    return read_sessions


async def provide_principal(
    request: Request[Any, Any, Any], authenticator: Authenticator
) -> Principal:
    """Any valid key: the admin key or a team key."""
    return await authenticator.authenticate(
        credential_from_headers(request), client_address(request)
    )


async def provide_admin(request: Request[Any, Any, Any], authenticator: Authenticator) -> Principal:
    """Only the admin key; a valid team key is refused with 403."""
    principal = await authenticator.authenticate(
        credential_from_headers(request), client_address(request)
    )
    if not principal.is_admin:
        raise PermissionDenied("This route needs the admin key.")
    return principal
