"""``ledger doctor``: what an operator checks after editing the config, in one table.

Each check says ok, warn or FAIL, what it saw and what to fix. Nothing here prints a key:
a provider is named by its ``api_key_env``, never by its value.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import httpx
from sqlalchemy import select, text

from ledger.config import ProviderConfig, Settings
from ledger.db.engine import create_engine
from ledger.db.journal import journal_directory
from ledger.db.migrate import current_revision, head_revision
from ledger.db.prices import load_registry
from ledger.db.tables import ApiKey, Budget, Team
from ledger.pricing import PriceBook, load_catalog
from ledger.providers import anthropic, openai

Status = Literal["ok", "warn", "FAIL"]
PROVIDER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def settings_checks(settings: Settings, env: Mapping[str, str]) -> list[Check]:
    """Where the settings came from: the file, and which LEDGER_* variables override it."""
    from_env = sorted(k for k, v in env.items() if k.startswith("LEDGER_") and v)
    where = settings.config_file or "no config file (LEDGER_CONFIG unset): defaults"
    return [
        Check("settings", "ok", f"read from {where}; from the environment: "
              f"{', '.join(from_env) or 'none'}"),
    ]  # fmt: skip


async def database_checks(settings: Settings) -> list[Check]:
    """Reachable (SELECT 1) and migrated to the head revision."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        current = await current_revision(engine)
    except Exception as exc:
        return [Check("database", "FAIL", f"cannot connect: {type(exc).__name__}",
                      "check database_url (LEDGER_DATABASE_URL) and that the server is up")]  # fmt: skip
    finally:
        await engine.dispose()
    head = head_revision()
    if current != head:
        return [Check("database", "FAIL", f"at revision {current or 'none'}, head is {head}",
                      "run `ledger db upgrade`")]  # fmt: skip
    return [Check("database", "ok", f"reachable, at head revision {head}")]


def journal_checks(settings: Settings) -> list[Check]:
    """The journal directory can be created and written (a temporary file, removed)."""
    directory = journal_directory(settings.journal_dir, settings.database_url)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [Check("journal", "FAIL", f"{directory} is not writable ({exc.strerror})",
                      "set journal_dir (LEDGER_JOURNAL_DIR) to a writable directory")]  # fmt: skip
    return [Check("journal", "ok", f"{directory} is writable")]


async def provider_checks(settings: Settings, env: Mapping[str, str]) -> list[Check]:
    """Each provider answers its models list, and accepts its key."""
    checks = []
    async with httpx.AsyncClient(timeout=PROVIDER_TIMEOUT_S) as client:
        for provider in settings.providers:
            checks.append(await _provider_check(client, provider, env))
    if not settings.providers:
        checks.append(Check("providers", "warn", "none configured: the built-in mock answers",
                            "add [[providers]] to the config file"))  # fmt: skip
    return checks


async def _provider_check(
    client: httpx.AsyncClient, provider: ProviderConfig, env: Mapping[str, str]
) -> Check:
    name = f"provider {provider.name}"
    if provider.kind == "mock":
        return Check(name, "ok", "the built-in mock")
    if provider.api_key_env and not env.get(provider.api_key_env):
        return Check(name, "FAIL", f"{provider.api_key_env} is not set",
                     f"export {provider.api_key_env} with the provider's API key")  # fmt: skip
    base = provider.normalised_base_url
    if provider.kind == "openai":
        url = base + "/models"  # an OpenAI base_url includes /v1, as the SDK's does
        headers = openai.auth_headers(provider.api_key)
    else:
        url = base + anthropic.api_path(base, "/models")
        headers = {**anthropic.auth_headers(provider.api_key), "anthropic-version": "2023-06-01"}
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return Check(name, "FAIL", f"{base} unreachable ({type(exc).__name__})",
                     f"check base_url of provider {provider.name} and the network")  # fmt: skip
    if response.status_code in (401, 403):
        return Check(name, "FAIL", f"key refused ({response.status_code})",
                     f"check {provider.api_key_env or 'api_key_env'}")  # fmt: skip
    if response.status_code >= 400:
        return Check(name, "warn", f"models list answered {response.status_code}",
                     f"check base_url of provider {provider.name}")  # fmt: skip
    return Check(name, "ok", f"{base} reachable, key accepted")


def model_checks(settings: Settings) -> list[Check]:
    """Every [[models]] entry routed to a configured provider and priced."""
    book = PriceBook([*load_catalog(), *settings.price_overrides])
    providers = {p.name for p in settings.providers}
    now = datetime.now(UTC)
    checks = []
    for model in settings.models:
        name = f"model {model.name}"
        if model.provider not in providers:
            checks.append(Check(name, "FAIL", f"provider {model.provider!r} is not configured",
                                "add it to [[providers]] or fix the model's provider"))  # fmt: skip
        elif (
            not model.free
            and (book.price_at(model.name, now) or book.price_at(model.upstream_model, now)) is None
        ):
            checks.append(Check(name, "FAIL", "no price: requests for it are refused",
                                f"add a [[prices]] entry for {model.name} (or free = true)"))  # fmt: skip
        else:
            checks.append(Check(name, "ok", f"routed to {model.provider}, priced"))
    return checks


async def budget_checks(settings: Settings) -> list[Check]:
    """Every budget names a team and key that exist, and a model budget a priced model.

    Budgets send their alerts to every configured channel, so no budget names one.
    """
    engine = create_engine(settings.database_url)
    try:
        if await current_revision(engine) != head_revision():
            return [Check("budgets", "warn", "not checked: the database is not at head",
                          "run `ledger db upgrade`, then `ledger doctor` again")]  # fmt: skip
        async with engine.connect() as connection:
            budgets = (
                await connection.execute(
                    select(Budget).where(Budget.deleted_at.is_(None)).order_by(Budget.id)
                )
            ).all()
            teams = set((await connection.execute(select(Team.id))).scalars())
            keys = {row.id: row for row in (await connection.execute(select(ApiKey))).all()}
        registry = await load_registry(engine)
    except Exception as exc:
        return [Check("budgets", "warn", f"not checked: cannot read them ({type(exc).__name__})",
                      "fix the database check above")]  # fmt: skip
    finally:
        await engine.dispose()
    book = PriceBook([*load_catalog(), *settings.price_overrides])
    configured = {model.name: model for model in settings.models}
    now = datetime.now(UTC)

    def priced(model: str) -> bool:
        entry = configured.get(model)
        names = (model,) if entry is None else (model, entry.upstream_model)
        if entry is not None and entry.free:
            return True
        return any(registry.price_at(n, now) or book.price_at(n, now) for n in names)

    checks = []
    for budget in budgets:
        problems: list[tuple[str, str]] = []
        if budget.team_id is not None and budget.team_id not in teams:
            problems.append((f"team id {budget.team_id} does not exist",
                             "delete the budget and create it for an existing team"))  # fmt: skip
        if budget.scope == "key":
            key = keys.get(budget.key_id)
            if key is None:
                problems.append((f"key id {budget.key_id} does not exist",
                                 "delete the budget and create it for an existing key"))  # fmt: skip
            elif key.revoked_at is not None:
                problems.append((f"key id {budget.key_id} is revoked: it limits nothing",
                                 "delete the budget"))  # fmt: skip
        if budget.scope == "model" and budget.model and not priced(budget.model):
            problems.append((f"model {budget.model!r} has no price: its requests are refused "
                             "or recorded at $0, never counted against the budget",
                             f"price {budget.model} (POST /admin/prices or [[prices]]) or "
                             "fix the budget's model"))  # fmt: skip
        name = f"budget {budget.id} {budget.name}"
        if problems:
            checks.extend(Check(name, "FAIL", detail, fix) for detail, fix in problems)
    ok = len(budgets) - len({c.name for c in checks})
    summary = f"{ok} of {len(budgets)} budgets valid"
    checks.insert(0, Check("budgets", "FAIL", summary, "see each budget below") if checks
                  else Check("budgets", "ok", summary))  # fmt: skip
    return checks


def alert_checks(settings: Settings) -> list[Check]:
    checks = []
    for channel in settings.alert_channels:
        name = f"alert channel {channel.name}"
        if channel.kind == "webhook" and not channel.secret:
            checks.append(Check(name, "warn", "webhook without a signing secret",
                                "set secret_env and export that variable"))  # fmt: skip
        else:
            checks.append(Check(name, "ok", channel.kind))
    return checks


async def run_checks(settings: Settings, env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order an operator fixes things."""
    env = os.environ if env is None else env
    return [
        *settings_checks(settings, env),
        *(await database_checks(settings)),
        *journal_checks(settings),
        *(await provider_checks(settings, env)),
        *model_checks(settings),
        *(await budget_checks(settings)),
        *alert_checks(settings),
    ]


def render(checks: list[Check]) -> str:
    """A plain-text table: check, status, detail, fix."""
    rows = [
        ("CHECK", "STATUS", "DETAIL", "FIX"),
        *((c.name, c.status, c.detail, c.fix) for c in checks),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + ("  " + row[3] if row[3] else "")
        for row in rows
    )
