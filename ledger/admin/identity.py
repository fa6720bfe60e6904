"""Teams, client keys and the principal a request acts as."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger.access import PatternError, Patterns, parse_patterns, storable, stored_patterns
from ledger.admin.credentials import display_prefix, hash_key, new_client_key
from ledger.db.tables import ApiKey, Team
from ledger.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooManyFailedAuthentications,
)

# Errors that mean the key store cannot be reached, as opposed to "no such key".
_DATABASE_ERRORS = (DBAPIError, OSError, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the admin, or one key of one team."""

    is_admin: bool
    team_id: int | None = None
    team_name: str | None = None
    key_id: int | None = None
    key_prefix: str | None = None
    # The team's and the key's allowed_models patterns (None: no restriction), cached
    # with the key, so a change reaches other processes within the key cache's TTL.
    team_allowed_models: Patterns | None = None
    key_allowed_models: Patterns | None = None


ADMIN = Principal(is_admin=True)


class FailureThrottle:
    """Slows down a client that keeps presenting bad keys, without touching anyone else.

    After ``max_failures`` failed authentications within ``window_s`` seconds from one
    client address, that address's failures are answered 429 instead of 401 until the
    window has passed. Only failures: a valid key is served from any address, so a
    client that shares (or forges) an address cannot lock a key out. Counted per
    process; memory is bounded by forgetting the oldest clients.
    """

    def __init__(
        self, *, max_failures: int = 30, window_s: float = 60.0, max_clients: int = 100_000
    ) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_clients = max_clients
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, client: str | None) -> int | None:
        """Seconds until ``client`` may try again, or None if it may try now."""
        if client is None:
            return None
        times = self._recent(client, time.monotonic())
        if len(times) < self._max_failures:
            return None
        return max(1, int(times[0] + self._window_s - time.monotonic()) + 1)

    def failed(self, client: str | None) -> None:
        if client is None:
            return
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times[-self._max_failures :]
        if len(self._failures) > self._max_clients:
            oldest = next(iter(self._failures))
            del self._failures[oldest]

    def _recent(self, client: str, now: float) -> list[float]:
        return [t for t in self._failures.get(client, ()) if now - t < self._window_s]


_REFUSED = "Invalid or revoked API key."
_PRINCIPAL_COLUMNS = (
    ApiKey.id, ApiKey.prefix, ApiKey.revoked_at, Team.id, Team.name,
    Team.allowed_models, ApiKey.allowed_models,
)  # fmt: skip


class Authenticator:
    """Turns a presented key into a :class:`Principal`.

    Valid client keys are cached for ``ttl_s`` seconds so the hot path does not hit
    the database on every request. Revoking a key through this process takes effect
    at once; through another process, within ``ttl_s``.

    A key in steady use never waits for the database: in the second half of its cache
    lifetime one background lookup renews it. A key that is not cached is looked up
    once however many requests present it at the same moment; otherwise every expiry
    under load would send a burst of identical queries and stall all of them.

    A refused key is remembered for ``refused_ttl_s``: a client stuck on a wrong key
    costs one query, not one per request. That cannot refuse a good key, since
    Ledger generates every key itself (nobody can present one before it exists) and
    a revocation is final.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        secret: bytes,
        admin_hashes: set[str],
        *,
        ttl_s: float = 2.0,
        refused_ttl_s: float = 30.0,
        max_cached: int = 100_000,
    ) -> None:
        self._sessions = sessions
        self._secret = secret
        self._admin_hashes = frozenset(admin_hashes)
        self._ttl_s = ttl_s
        self._max_cached = max_cached
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._refused_ttl_s = refused_ttl_s
        # Kept apart from ``_cache`` so a flood of made-up keys cannot evict good ones.
        self._refused: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Task[Principal]] = {}
        # Bumped by every revocation here: a lookup that began before it must not
        # put the revoked key back into the cache.
        self._generation = 0
        self.throttle = FailureThrottle()

    @property
    def secret(self) -> bytes:
        return self._secret

    def hash(self, key: str) -> str:
        return hash_key(self._secret, key)

    def is_admin_key(self, key: str | None) -> bool:
        if not key:
            return False
        return self._is_admin_digest(self.hash(key))

    def _is_admin_digest(self, digest: str) -> bool:
        # compare_digest on each, all of them: no early exit that would time the match.
        matches = [hmac.compare_digest(digest, known) for known in self._admin_hashes]
        return any(matches)

    async def authenticate(self, key: str | None, client: str | None = None) -> Principal:
        """The principal for ``key``; raises :class:`AuthenticationFailed` otherwise.

        After repeated failures from ``client`` (the caller's address) its further
        failures are :class:`TooManyFailedAuthentications` (429). A valid key is never
        refused for its address: keys carry 256 random bits, so the throttle has no
        guess to stop, only a client stuck on bad keys to slow down.
        """
        try:
            return await self._authenticate(key)
        except AuthenticationFailed:
            wait = self.throttle.retry_after(client)
            if wait is not None:
                raise TooManyFailedAuthentications(wait) from None
            if key:  # a wrong key is a guess; a missing one is not
                self.throttle.failed(client)
            raise

    async def _authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationFailed("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        digest = self.hash(key)
        if self._is_admin_digest(digest):
            return ADMIN
        now = time.monotonic()
        refused_until = self._refused.get(digest)
        if refused_until is not None and refused_until > now:
            raise AuthenticationFailed(_REFUSED)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            if cached[1] - now < self._ttl_s / 2 and digest not in self._lookups:
                self._start_lookup(digest).add_done_callback(_consume_exception)
            return cached[0]
        lookup = self._lookups.get(digest) or self._start_lookup(digest)
        try:
            # Shielded: one caller giving up must not cancel the lookup the others await.
            return await asyncio.shield(lookup)
        except _DATABASE_ERRORS as exc:
            if cached is not None:
                # Valid moments ago, and the key store is down: keep serving it (a revocation
                # made through another process waits for the database, as it must).
                return cached[0]
            raise ServiceUnavailable(
                "Keys cannot be checked right now: the database is unreachable. Try again shortly.",
                code="auth_unavailable",
            ) from exc

    async def warm(self) -> None:
        """Look a key up once, for no key: the query is compiled and a connection is open
        before the first request needs them (which then waited milliseconds for both)."""
        with contextlib.suppress(AuthenticationFailed):
            await self._look_up("")
        self._refused.pop("", None)

    def _start_lookup(self, digest: str) -> asyncio.Task[Principal]:
        task = asyncio.get_running_loop().create_task(self._look_up(digest))
        self._lookups[digest] = task
        task.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return task

    async def _look_up(self, digest: str) -> Principal:
        generation = self._generation
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(*_PRINCIPAL_COLUMNS)
                    .join(Team, Team.id == ApiKey.team_id)
                    .where(ApiKey.key_hash == digest)
                )
            ).first()
        if row is None or row.revoked_at is not None:
            self._cache.pop(digest, None)
            if len(self._refused) >= self._max_cached:
                self._refused.clear()
            self._refused[digest] = time.monotonic() + self._refused_ttl_s
            raise AuthenticationFailed(_REFUSED)
        principal = Principal(
            is_admin=False, team_id=row[3], team_name=row[4], key_id=row[0], key_prefix=row[1],
            team_allowed_models=stored_patterns(row[5]), key_allowed_models=stored_patterns(row[6]),
        )  # fmt: skip
        if generation == self._generation:
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
            self._cache[digest] = (principal, time.monotonic() + self._ttl_s)
        return principal

    def forget_key(self, key_id: int) -> None:
        """Drop a revoked (or changed) key from this process's cache."""
        self._forget(lambda principal: principal.key_id == key_id)

    def forget_team(self, team_id: int) -> None:
        """Drop every key of a changed team from this process's cache."""
        self._forget(lambda principal: principal.team_id == team_id)

    def _forget(self, matches: Callable[[Principal], bool]) -> None:
        self._generation += 1
        for digest, (principal, _) in list(self._cache.items()):
            if matches(principal):
                del self._cache[digest]


def _consume_exception(task: asyncio.Task[Principal]) -> None:
    # A background renewal that fails leaves the cached entry to expire; the next
    # request looks the key up itself and reports what went wrong.
    if not task.cancelled():
        task.exception()


# Teams ------------------------------------------------------------------------------


async def create_team(
    session: AsyncSession,
    name: str,
    *,
    cost_centre: str | None = None,
    markup_bps: int = 0,
    allowed_models: object = None,
) -> Team:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidRequest("team name must be 1 to 100 characters", param="name")
    if cost_centre is not None and len(cost_centre) > 100:
        # SQLite would store it whole and PostgreSQL refuse it: refuse it the same way on both.
        raise InvalidRequest("cost_centre must be at most 100 characters", param="cost_centre")
    team = Team(
        name=name, cost_centre=cost_centre, markup_bps=markup_bps, created_at=datetime.now(UTC),
        allowed_models=storable(allowed_patterns(allowed_models)),
    )  # fmt: skip
    session.add(team)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a team named {name!r} already exists") from exc
    return team


async def list_teams(session: AsyncSession) -> list[Team]:
    return list((await session.scalars(select(Team).order_by(Team.id))).all())


async def set_team_allowed_models(
    session: AsyncSession, team_id: int, allowed_models: object
) -> Team:
    """Replace a team's ``allowed_models`` (``None`` lifts the restriction)."""
    team = await session.get(Team, team_id)
    if team is None:
        raise NotFound(f"no team with id {team_id}")
    team.allowed_models = storable(allowed_patterns(allowed_models))
    await session.flush()
    return team


def allowed_patterns(value: object) -> Patterns | None:
    """``allowed_models`` as an admin sent it: ``None`` (no restriction) or patterns."""
    if value is None:
        return None
    try:
        return parse_patterns(value)
    except PatternError as exc:
        raise InvalidRequest(str(exc), param="allowed_models") from exc


async def get_team_by_name(session: AsyncSession, name: str) -> Team:
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(f"no team named {name!r}")
    return team


# Keys -------------------------------------------------------------------------------


async def create_key(
    session: AsyncSession, secret: bytes, team: Team, name: str, allowed_models: object = None
) -> tuple[ApiKey, str]:
    """Create a key for ``team``; the plaintext is returned here and never again."""
    name = name.strip() or "default"
    if len(name) > 100:
        raise InvalidRequest("key name must be at most 100 characters", param="name")
    plaintext = new_client_key()
    key = ApiKey(
        team_id=team.id,
        name=name,
        prefix=display_prefix(plaintext),
        key_hash=hash_key(secret, plaintext),
        created_at=datetime.now(UTC),
        allowed_models=storable(allowed_patterns(allowed_models)),
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def list_keys(session: AsyncSession, team_id: int | None = None) -> list[tuple[ApiKey, str]]:
    query = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id).order_by(ApiKey.id)
    if team_id is not None:
        query = query.where(ApiKey.team_id == team_id)
    return [(key, team_name) for key, team_name in (await session.execute(query)).all()]


async def set_key_allowed_models(
    session: AsyncSession, key_id: int, allowed_models: object
) -> ApiKey:
    """Replace a key's ``allowed_models`` (``None`` lifts the restriction)."""
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key with id {key_id}")
    key.allowed_models = storable(allowed_patterns(allowed_models))
    await session.flush()
    return key


async def revoke_key(session: AsyncSession, key_id: int) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key with id {key_id}")
    if key.revoked_at is None:
        await session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC))
        )
        await session.refresh(key)
    return key
