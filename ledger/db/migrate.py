"""Run Alembic migrations from inside Ledger (``ledger serve``, ``ledger db upgrade``)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db.engine import create_engine, is_sqlite

T = TypeVar("T")
_VERSION_TABLE = "alembic_version"  # Alembic's default; migrations/env.py keeps it

# Any constant works; it only has to be the same in every Ledger process.
_MIGRATION_LOCK_ID = 0x1ED6E2


_PARTITION = re.compile(r"^ledger_entries_(\d{4}_\d{2}|default)$")


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Leave the ledger's monthly partitions (PostgreSQL) out of schema comparisons.

    They are made by the migration and the partition job, not declared as models; their
    indexes are the parent's, inherited.
    """
    if type_ == "table" and name and _PARTITION.match(name):
        return False
    if type_ == "index" and reflected and compare_to is None:
        table = getattr(getattr(obj, "table", None), "name", "")
        if _PARTITION.match(table):
            return False
    return True


def migration_options() -> dict[str, Any]:
    """Options every Alembic context uses, so that checks and migrations agree."""
    return {"render_as_batch": True, "compare_type": True, "include_object": include_object}


def migrations_dir() -> Path:
    """The migrations shipped inside the wheel, or the repository's when run from a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe when several processes start together."""
    async with engine.connect() as connection:
        if not is_sqlite(str(engine.url)):
            # Held until commit: the second process waits, then finds nothing to do.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
        await connection.run_sync(_upgrade, revision)
        await connection.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema's revision; None before the first migration.

    Read from Alembic's version table directly: ``/readyz`` asks on every probe, and
    Alembic's ``MigrationContext`` writes two INFO lines each time it is set up.
    """
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        if _VERSION_TABLE not in tables:
            return None
        return await connection.scalar(text("SELECT version_num FROM alembic_version"))


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def with_migrated_engine(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work(engine)`` once the database's schema is current; the engine is disposed after.

    For the command-line tools: each command opens, migrates and closes its own engine.
    """
    engine = create_engine(database_url, null_pool=True)
    try:
        await upgrade(engine)
        return await work(engine)
    finally:
        await engine.dispose()
