"""``ledger report``, ``ledger month`` and ``ledger demo``."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Attach the report commands to the ``ledger`` command group."""
    return None
