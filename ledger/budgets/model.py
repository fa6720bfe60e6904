"""Budgets as the hot path sees them: immutable rules and the request they may apply to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.budgets.periods import period_bounds

SCOPES = ("org", "team", "key", "user", "model", "tag")
MODES = ("hard", "soft")
DEFAULT_THRESHOLDS = (50, 80, 100)


@dataclass(frozen=True, slots=True)
class RequestScope:
    """What a budget can match on."""

    team_id: int | None
    key_id: int | None
    end_user: str | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetRule:
    id: int
    name: str
    scope: str
    limit_nanos: int
    mode: str
    period: str
    timezone: str = "UTC"
    team_id: int | None = None
    key_id: int | None = None
    end_user: str | None = None
    model: str | None = None
    tag: str | None = None
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    clamp_max_tokens: bool = False
    fail_open: bool = False

    @property
    def hard(self) -> bool:
        return self.mode == "hard"

    def applies_to(self, request: RequestScope) -> bool:
        """Whether a request falls under this budget. Team-bound scopes need the same team."""
        if self.team_id is not None and self.team_id != request.team_id:
            return False
        if self.scope == "org":
            return True
        if self.scope == "team":
            return True  # team_id matched above
        if self.scope == "key":
            return self.key_id == request.key_id
        if self.scope == "user":
            return request.end_user is not None and self.end_user == request.end_user
        if self.scope == "model":
            return request.model is not None and self.model == request.model
        if self.scope == "tag":
            return self.tag in request.tags
        return False

    def bounds(self, at: datetime) -> tuple[datetime, datetime | None]:
        return period_bounds(self.period, self.timezone, at)


def parse_thresholds(text: str) -> tuple[int, ...]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    return tuple(values)
