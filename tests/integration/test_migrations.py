"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from ledger.db.engine import create_engine
from ledger.db.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    migration_options,
    upgrade,
)
from ledger.db.tables import metadata


def _drift(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={**migration_options(), "compare_server_default": False}
    )
    return compare_metadata(context, metadata)


def _downgrade_to_base(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "base")


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _round_trip(database_url: str) -> dict[str, Any]:
    engine = create_engine(database_url, null_pool=True)
    seen: dict[str, Any] = {}
    try:
        seen["empty"] = await current_revision(engine)
        await upgrade(engine)
        seen["upgraded"] = await current_revision(engine)
        async with engine.connect() as connection:
            seen["tables"] = await connection.run_sync(_tables)
            seen["drift"] = await connection.run_sync(_drift)

        async with engine.connect() as connection:
            await connection.run_sync(_downgrade_to_base)
            await connection.commit()
        seen["downgraded"] = await current_revision(engine)
        async with engine.connect() as connection:
            seen["tables_after_downgrade"] = await connection.run_sync(_tables)

        await upgrade(engine)
        seen["upgraded_again"] = await current_revision(engine)
        async with engine.connect() as connection:
            seen["drift_again"] = await connection.run_sync(_drift)
        await upgrade(engine)  # a second upgrade finds nothing to do
    finally:
        await engine.dispose()
    return seen


def test_migrations_match_the_models_and_go_down_and_up_again(database_url: str) -> None:
    seen = asyncio.run(_round_trip(database_url))
    head = head_revision()
    assert head is not None

    assert seen["empty"] is None
    assert seen["upgraded"] == head
    assert set(metadata.tables) <= seen["tables"]
    # Nothing in ledger/db/tables.py is missing from, or different in, the migrations.
    assert seen["drift"] == []

    assert seen["downgraded"] is None
    assert seen["tables_after_downgrade"] <= {"alembic_version"}

    assert seen["upgraded_again"] == head
    assert seen["drift_again"] == []
