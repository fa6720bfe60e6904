"""Keys: how they are made, hashed and shown. Only keyed hashes are ever stored.

Keys carry 256 bits of randomness, so a keyed SHA-256 (HMAC) is enough: there is
nothing to brute-force, and lookups are one indexed equality on the hash, which
takes the same time whatever the key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db.engine import is_sqlite_file, write_transaction
from ledger.db.journal import journal_directory
from ledger.db.tables import AdminCredential, InstanceSetting

CLIENT_KEY_PREFIX = "sk-ledger-"
ADMIN_KEY_PREFIX = "sk-ledger-admin-"
_PEPPER_SETTING = "key_hash_secret"
ADMIN_KEY_FILE = "admin-key"


def new_client_key() -> str:
    return CLIENT_KEY_PREFIX + secrets.token_urlsafe(32)


def new_admin_key() -> str:
    return ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: bytes, key: str) -> str:
    return hmac.digest(secret, key.encode("utf-8", "surrogatepass"), "sha256").hex()


def display_prefix(key: str) -> str:
    """Enough of a key to recognise it in a list; far too little to use it."""
    return key[: len(CLIENT_KEY_PREFIX) + 6]


async def load_hash_secret(engine: AsyncEngine, configured: str | None) -> bytes:
    """The HMAC secret: ``LEDGER_SECRET_KEY`` if set, else one generated once and shared via the DB.

    Every process sharing the database must hash the same way, so a generated secret
    is stored in the database on first start (insert-if-absent, then read back).
    """
    if configured:
        return configured.encode()
    async with engine.begin() as connection:
        dialect = connection.dialect.name
        stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(InstanceSetting).values(
            name=_PEPPER_SETTING, value=secrets.token_hex(32)
        )
        await connection.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        value = await connection.scalar(
            select(InstanceSetting.value).where(InstanceSetting.name == _PEPPER_SETTING)
        )
    return bytes.fromhex(str(value))


async def ensure_admin_key(engine: AsyncEngine, secret: bytes) -> str | None:
    """Create the first admin key if there is none; return it (to print once) or None."""
    async with engine.connect() as connection:
        existing = await connection.scalar(
            select(func.count())
            .select_from(AdminCredential)
            .where(AdminCredential.revoked_at.is_(None))
        )
    if existing:
        return None
    key = new_admin_key()
    async with write_transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            # Two processes starting together must not both mint a key.
            await connection.exec_driver_sql("LOCK TABLE admin_credentials IN EXCLUSIVE MODE")
        existing = await connection.scalar(
            select(func.count())
            .select_from(AdminCredential)
            .where(AdminCredential.revoked_at.is_(None))
        )
        if existing:
            return None
        await connection.execute(
            insert(AdminCredential).values(
                key_hash=hash_key(secret, key),
                prefix=display_prefix(key),
                created_at=datetime.now(UTC),
            )
        )
    return key


async def admin_key_hashes(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            select(AdminCredential.key_hash).where(AdminCredential.revoked_at.is_(None))
        )
        return set(rows.all())


def admin_key_file(database_url: str, journal_dir: str | None = None) -> Path:
    """Where a generated admin key is kept: beside a SQLite file, else in its journal directory.

    One file per database (``./ledger.db`` → ``./ledger.db.admin-key``), so a restart on the
    same database finds the key its first start generated.
    """
    if is_sqlite_file(database_url):
        database = Path(str(make_url(database_url).database))
        return database.with_name(database.name + "." + ADMIN_KEY_FILE)
    return journal_directory(journal_dir, database_url) / ADMIN_KEY_FILE


def write_admin_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path``, readable by its owner only (0600), replacing any older file.

    Written to a new file and renamed over the old one, so the key is never readable by
    others, not even for a moment, whatever the old file's mode was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # whatever the umask
        os.write(descriptor, (key + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def read_admin_key_file(path: Path) -> str | None:
    """The key in ``path``, or None when there is no such (readable) file."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
