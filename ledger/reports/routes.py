"""Report routes (spend, budgets, monthly finance report, dashboard)."""

from __future__ import annotations

from typing import Any

REPORT_ROUTES: list[Any] = []
