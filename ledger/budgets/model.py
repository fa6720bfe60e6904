"""Budgets as the hot path sees them: immutable rules and the request they may apply to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ledger.budgets.periods import period_bounds

SCOPES = ("org", "team", "key", "user", "model", "tag")
MODES = ("hard", "soft")
DEFAULT_THRESHOLDS = (50, 80, 100)


@dataclass(frozen=True, slots=True)
class RequestScope:
    """What a budget can match on.

    ``model`` is the name the client sent; ``priced_model`` the model it resolved to (its
    price's own name: ``gpt-4.1-mini`` for ``gpt-4.1-mini-2025-04-14`` or
    ``openai/gpt-4.1-mini``). A model budget matches either, so no alias escapes it.
    """

    team_id: int | None
    key_id: int | None
    end_user: str | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()
    priced_model: str | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """The names a model budget may match this request on."""
        names = (self.model, self.priced_model)
        return tuple(name for i, name in enumerate(names) if name and name not in names[:i])


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
            return self.model is not None and self.model in request.models
        if self.scope == "tag":
            return self.tag in request.tags
        return False

    def bounds(self, at: datetime) -> tuple[datetime, datetime | None]:
        return period_bounds(self.period, self.timezone, at)

    @property
    def target(self) -> tuple[str, object]:
        """The one value a request must have for this rule to apply (besides its team)."""
        value = {
            "org": None,
            "team": self.team_id,
            "key": self.key_id,
            "user": self.end_user,
            "model": self.model,
            "tag": self.tag,
        }.get(self.scope)
        return (self.scope, value)


# Up to this many rules, checking each is quicker than looking up the few that may apply.
_SCAN_AT_MOST = 16


class RuleIndex:
    """Budget rules by :attr:`BudgetRule.target`: a request's rules without a scan of them all.

    Every request asks which budgets apply to it, and an organisation with a budget per
    key or per user has thousands; only a handful can match any one request.
    """

    def __init__(self, rules: Iterable[BudgetRule] = ()) -> None:
        self._rules = sorted(rules, key=lambda rule: rule.id)
        self._by_target: dict[tuple[str, object], list[BudgetRule]] = {}
        for rule in self._rules:
            self._by_target.setdefault(rule.target, []).append(rule)

    def __iter__(self) -> Iterator[BudgetRule]:
        return iter(self._rules)

    def applicable(self, request: RequestScope) -> list[BudgetRule]:
        """The rules that apply to ``request``, by id."""
        if len(self._rules) <= _SCAN_AT_MOST:
            return [rule for rule in self._rules if rule.applies_to(request)]
        targets = {  # a set: with no team (or key, ...) two of them are the same
            ("org", None),
            ("team", request.team_id),
            ("team", None),  # not made through the API, but a team rule for no team is org-wide
            ("key", request.key_id),
            ("user", request.end_user),
            *(("model", model) for model in request.models),
            *(("tag", tag) for tag in request.tags),
        }
        found = [
            rule
            for target in targets
            for rule in self._by_target.get(target, ())
            if rule.applies_to(request)
        ]
        found.sort(key=lambda rule: rule.id)
        return found


def parse_thresholds(text: str) -> tuple[int, ...]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    return tuple(values)
