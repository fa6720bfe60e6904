"""Which budgets apply to a request: the index finds exactly what a scan of every rule finds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.budgets.model import SCOPES, BudgetRule, RequestScope, RuleIndex

SMALL = st.none() | st.integers(1, 3)
NAMES = st.none() | st.sampled_from(["a", "b", "c"])


@st.composite
def rules(draw: st.DrawFn) -> list[BudgetRule]:
    count = draw(st.integers(0, 40))  # both sides of the index's scanning threshold
    ids = draw(st.lists(st.integers(1, 1000), min_size=count, max_size=count, unique=True))
    return [
        BudgetRule(
            id=rule_id,
            name=f"budget {rule_id}",
            scope=draw(st.sampled_from([*SCOPES, "retired-scope"])),
            limit_nanos=1,
            mode="hard",
            period="monthly",
            team_id=draw(SMALL),
            key_id=draw(SMALL),
            end_user=draw(NAMES),
            model=draw(NAMES),
            tag=draw(NAMES),
        )
        for rule_id in ids
    ]


requests = st.builds(
    RequestScope,
    team_id=SMALL,
    key_id=SMALL,
    end_user=NAMES,
    model=NAMES,
    tags=st.lists(st.sampled_from(["a", "b", "c"]), max_size=3).map(tuple),
    priced_model=NAMES,
)


@given(rules(), requests)
def test_the_index_finds_the_rules_a_scan_finds_in_id_order(
    every_rule: list[BudgetRule], request: RequestScope
) -> None:
    scanned = sorted(
        (rule for rule in every_rule if rule.applies_to(request)), key=lambda rule: rule.id
    )
    assert RuleIndex(every_rule).applicable(request) == scanned


def test_a_key_budget_applies_to_its_key_and_an_org_budget_to_everyone() -> None:
    org = BudgetRule(id=1, name="org", scope="org", limit_nanos=1, mode="hard", period="monthly")
    key = BudgetRule(
        id=2, name="key 7", scope="key", limit_nanos=1, mode="hard", period="monthly",
        team_id=3, key_id=7,
    )  # fmt: skip
    index = RuleIndex([key, org])
    assert index.applicable(RequestScope(team_id=3, key_id=7)) == [org, key]
    assert index.applicable(RequestScope(team_id=3, key_id=8)) == [org]
    assert list(index) == [org, key]


def test_a_model_budget_applies_to_any_name_priced_as_its_model_and_a_dated_one_to_itself() -> None:
    def model_budget(rule_id: int, model: str) -> BudgetRule:
        return BudgetRule(
            id=rule_id, name=model, scope="model", limit_nanos=1, mode="hard", period="monthly",
            team_id=3, model=model,
        )  # fmt: skip

    mini, dated = model_budget(1, "gpt-4.1-mini"), model_budget(2, "gpt-4.1-mini-2025-04-14")
    index = RuleIndex([mini, dated])

    def budgets_for(sent: str, priced_as: str) -> list[BudgetRule]:
        return index.applicable(
            RequestScope(team_id=3, key_id=7, model=sent, priced_model=priced_as)
        )

    assert budgets_for("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini") == [mini, dated]
    assert budgets_for("openai/gpt-4.1-mini", "gpt-4.1-mini") == [mini]
    assert budgets_for("gpt-4.1-mini", "gpt-4.1-mini") == [mini]
    assert budgets_for("gpt-4.1-nano", "gpt-4.1-nano") == []
