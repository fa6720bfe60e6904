"""Alembic environment: async engine, batch mode for SQLite, Ledger's metadata.

Ledger itself passes an open connection (``config.attributes["connection"]``) so that
migrations can run inside the service's event loop; the alembic command line builds
its own engine from ``LEDGER_DATABASE_URL`` or the Ledger config.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from ledger.config import load_settings
from ledger.db.engine import create_engine
from ledger.db.migrate import migration_options
from ledger.db.tables import Timestamp, metadata

config = context.config


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Ledger's Timestamp is a DateTime(timezone=True) that normalises to UTC in Python;
    # migrations need only the column type, not an import of the application.
    if type_ == "type" and isinstance(obj, Timestamp):
        return "sa.DateTime(timezone=True)"
    return False


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_item=_render_item,
        **migration_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(load_settings().database_url, null_pool=True)
    async with engine.connect() as connection:
        await connection.run_sync(_run_with)
        await connection.commit()
    await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=load_settings().database_url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    _run_with(connection)
else:
    asyncio.run(_run_online())
