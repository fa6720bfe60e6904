"""Settings: read once from ``LEDGER_*`` environment variables and an optional TOML file.

The resulting :class:`Settings` object is handed down explicitly; nothing reads the
environment after start-up. Environment variables win over the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ledger.access import PatternError, Patterns, parse_patterns

ProviderKind = Literal["openai", "anthropic", "mock"]
PROVIDER_KINDS: tuple[str, ...] = ("openai", "anthropic", "mock")
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./ledger.db"
# The provider that serves every model when no [[providers]] are configured
# (ledger.providers.MOCK_PROVIDER_NAME; a lower layer cannot import it).
MOCK_PROVIDER = "mock"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream provider. The key is resolved from ``api_key_env`` and never printed."""

    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    use_count_tokens: bool = True

    @property
    def normalised_base_url(self) -> str:
        return self.base_url.rstrip("/")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model name clients send, the provider serving it and the name sent upstream."""

    name: str
    provider: str
    upstream_model: str
    free: bool = False


@dataclass(frozen=True, slots=True)
class AlertChannelConfig:
    """Where budget alerts go: a signed JSON webhook, a Slack incoming webhook, or the log."""

    name: str
    kind: Literal["webhook", "slack", "log"]
    url: str = ""
    secret: str | None = field(default=None, repr=False)  # HMAC key, from secret_env


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    reports_database_url: str | None = None  # a read replica for report and usage reads
    host: str = "127.0.0.1"
    port: int = 8080
    admin_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    price_overrides: tuple[Mapping[str, Any], ...] = ()
    # Model name patterns every request must match (None: any routed, priced model);
    # teams and keys may narrow it further (ledger.access).
    allowed_models: Patterns | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    # What a provider may send back: a response read whole (before and after decoding),
    # one event of a stream, and how far a gzip/deflate body may inflate. Past any of
    # them the request ends with 502 (a stream with an error event), billed as estimated.
    max_response_bytes: int = 32 * 1024 * 1024
    max_event_bytes: int = 8 * 1024 * 1024
    max_decompression_ratio: int = 100
    default_max_output_tokens: int = 4096
    # The input tokens a Responses request's stored context (previous_response_id or
    # conversation) is reserved as: Ledger cannot see it, so it reserves a model's window.
    responses_context_bound_tokens: int = 200_000
    migrate_on_start: bool = True
    scheduler: bool = True
    key_cache_ttl_s: float = 2.0
    ledger_batch_max: int = 512
    writer_process: bool = True  # commit ledger batches in a process of their own
    db_pool_size: int = 10
    pg_statement_cache_size: int = 100  # 0 behind PgBouncer in transaction mode
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    workers: int = 1
    reporting_timezone: str = "UTC"
    alert_channels: tuple[AlertChannelConfig, ...] = ()
    journal_dir: str | None = None
    reservation_ttl_s: float = 30.0
    budget_check_interval_s: float = 30.0
    reservation_sweep_interval_s: float = 10.0
    alert_delivery_interval_s: float = 5.0
    # Addresses whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated,
    # "*" for any). Unset: none are, and the client is the connection's peer.
    trusted_proxies: str | None = None
    # A connection that has not sent a whole request head within this time is closed (408).
    header_read_timeout_s: float = 10.0
    # A request body that has not arrived in full within this time is refused (408).
    body_read_timeout_s: float = 30.0
    # How long a hard-budget decision may wait for a locked SQLite file before the
    # request is refused with 503 budget_unavailable.
    budget_db_timeout_s: float = 2.0
    config_file: str | None = None

    @property
    def uses_mock_provider(self) -> bool:
        return not self.providers or any(p.kind == "mock" for p in self.providers)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_ENV_FIELDS: dict[str, type] = {
    "database_url": str,
    "reports_database_url": str,
    "host": str,
    "port": int,
    "admin_key": str,
    "secret_key": str,
    "metrics_token": str,
    "max_body_bytes": int,
    "max_response_bytes": int,
    "max_event_bytes": int,
    "max_decompression_ratio": int,
    "default_max_output_tokens": int,
    "responses_context_bound_tokens": int,
    "migrate_on_start": bool,
    "scheduler": bool,
    "key_cache_ttl_s": float,
    "ledger_batch_max": int,
    "writer_process": bool,
    "db_pool_size": int,
    "pg_statement_cache_size": int,
    "log_level": str,
    "log_format": str,
    "workers": int,
    "reporting_timezone": str,
    "reservation_ttl_s": float,
    "journal_dir": str,
    "budget_check_interval_s": float,
    "reservation_sweep_interval_s": float,
    "alert_delivery_interval_s": float,
    "trusted_proxies": str,
    "header_read_timeout_s": float,
    "body_read_timeout_s": float,
    "budget_db_timeout_s": float,
}


# Limits where 0 or less would refuse every answer rather than mean "no limit".
_POSITIVE_FIELDS = ("max_response_bytes", "max_event_bytes", "max_decompression_ratio")
_SECTIONS = frozenset({"providers", "models", "prices", "alert_channels"})
_LIST_FIELDS = frozenset({"allowed_models"})  # a TOML list, or comma-separated in LEDGER_*


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Build settings from a TOML file (``config_file`` or ``LEDGER_CONFIG``) and the environment."""
    env = os.environ if env is None else env
    path = config_file or env.get("LEDGER_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    unknown = sorted(set(data) - set(_ENV_FIELDS) - _SECTIONS - _LIST_FIELDS)
    if unknown:
        # A typo such as `databse_url` must not silently fall back to the default.
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, kind in _ENV_FIELDS.items():
        if name in data:
            values[name] = _coerce(name, data[name], kind)
        env_name = f"LEDGER_{name.upper()}"
        if env_name in env and env[env_name] != "":
            values[name] = _coerce(env_name, env[env_name], kind)
    for name in _POSITIVE_FIELDS:
        if name in values and values[name] < 1:
            raise ConfigError(f"{name} must be at least 1, not {values[name]!r}")
    for name in ("database_url", "reports_database_url"):
        if name in values:
            values[name] = normalise_database_url(values[name])
    for name in _LIST_FIELDS:
        env_name = f"LEDGER_{name.upper()}"
        for source, raw in ((name, data.get(name)), (env_name, env.get(env_name) or None)):
            if raw is not None:
                try:
                    values[name] = parse_patterns(raw)
                except PatternError as exc:
                    raise ConfigError(f"{source}: {exc}") from exc

    providers = tuple(_provider(p, env) for p in _table_list(data, "providers"))
    provider_names = [p.name for p in providers]
    if len(set(provider_names)) != len(provider_names):
        raise ConfigError("provider names must be unique")
    models = tuple(_model(m, set(provider_names)) for m in _table_list(data, "models"))
    served_by = {m.name: m.provider for m in models}
    prices = tuple(
        _price_with_provider(table, served_by, provider_names)
        for table in _table_list(data, "prices")
    )
    channels = tuple(_alert_channel(c, env) for c in _table_list(data, "alert_channels"))
    return Settings(
        **values,
        alert_channels=channels,
        providers=providers,
        models=models,
        price_overrides=prices,
        config_file=str(path) if path else None,
    )


def normalise_database_url(url: str) -> str:
    """Accept plain ``sqlite://`` and ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def _table_list(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"[[{key}]] must be a list of tables")
    return tables


_PROVIDER_KEYS = frozenset(
    {"name", "kind", "base_url", "api_key_env", "timeout_s", "connect_timeout_s"}
    | {"use_count_tokens"}
)
_MODEL_KEYS = frozenset({"name", "provider", "upstream_model", "free"})


def _provider(table: Mapping[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    name = _required_str(table, "name", "providers")
    _refuse_unknown_keys(table, _PROVIDER_KEYS, f"provider {name!r}")
    kind = table.get("kind", name)
    if kind not in PROVIDER_KINDS:
        raise ConfigError(f"provider {name!r}: kind must be one of {', '.join(PROVIDER_KINDS)}")
    base_url = str(table.get("base_url", ""))
    if kind != "mock" and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"provider {name!r}: base_url must be an http(s) URL")
    api_key_env = table.get("api_key_env")
    api_key = env.get(api_key_env) if api_key_env else None
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url,
        api_key_env=api_key_env,
        api_key=api_key,
        timeout_s=_coerce(f"provider {name}.timeout_s", table.get("timeout_s", 600), float),
        connect_timeout_s=_coerce(
            f"provider {name}.connect_timeout_s", table.get("connect_timeout_s", 10), float
        ),
        use_count_tokens=_coerce(
            f"provider {name}.use_count_tokens", table.get("use_count_tokens", True), bool
        ),
    )


def _alert_channel(table: Mapping[str, Any], env: Mapping[str, str]) -> AlertChannelConfig:
    name = _required_str(table, "name", "alert_channels")
    kind = table.get("kind", "webhook")
    if kind not in ("webhook", "slack", "log"):
        raise ConfigError(f"alert channel {name!r}: kind must be webhook, slack or log")
    url = str(table.get("url", ""))
    if kind != "log" and not url.startswith(("http://", "https://")):
        raise ConfigError(f"alert channel {name!r}: url must be an http(s) URL")
    secret_env = table.get("secret_env")
    return AlertChannelConfig(
        name=name, kind=kind, url=url, secret=env.get(secret_env) if secret_env else None
    )


def _model(table: Mapping[str, Any], providers: set[str]) -> ModelConfig:
    name = _required_str(table, "name", "models")
    _refuse_unknown_keys(table, _MODEL_KEYS, f"model {name!r}")
    provider = _required_str(table, "provider", "models")
    if provider not in providers:
        raise ConfigError(f"model {name!r} names unknown provider {provider!r}")
    return ModelConfig(
        name=name,
        provider=provider,
        upstream_model=str(table.get("upstream_model") or name),
        free=_coerce(f"model {name}.free", table.get("free", False), bool),
    )


def _price_with_provider(
    table: Mapping[str, Any], served_by: Mapping[str, str], providers: list[str]
) -> Mapping[str, Any]:
    """A ``[[prices]]`` entry with its provider filled in, checked now rather than at start."""
    from ledger.pricing import PriceError, load_catalog, price_from_mapping
    from ledger.pricing.book import PriceBook

    model = table.get("model")
    try:
        if "provider" not in table and isinstance(model, str) and model:
            catalog = PriceBook(load_catalog())
            table = {
                **table,
                "provider": provider_for_price(
                    model,
                    served_by=served_by,
                    known_provider=lambda name: _latest_provider(catalog, name),
                    providers=providers,
                ),
            }
        price_from_mapping({"effective_from": "1970-01-01", "source": "config file", **table})
    except (PriceError, ConfigError) as exc:
        raise ConfigError(f"[[prices]] entry {model!r}: {exc}") from exc
    return table


def provider_for_price(
    model: str,
    *,
    served_by: Mapping[str, str],
    known_provider: Callable[[str], str | None],
    providers: list[str],
) -> str:
    """The provider a price of ``model`` belongs to, when the price does not say.

    The route decides: a ``[[models]]`` entry's provider; else the provider of the
    model's known price (the catalog, or an earlier override: a dated alias finds its
    model's); else the only provider configured (the mock, with none). Several
    providers and a model nobody routes yet is ambiguous: refused, naming the choices.
    """
    if model in served_by:
        return served_by[model]
    known = known_provider(model)
    if known:
        return known
    choices = providers or [MOCK_PROVIDER]
    if len(choices) == 1:
        return choices[0]
    raise ConfigError(
        f"provider is needed: {model!r} is neither a [[models]] entry nor a known model, "
        f"and {len(choices)} providers could serve it; set provider to one of "
        f"{', '.join(repr(c) for c in choices)}"
    )


def _latest_provider(book: Any, model: str) -> str | None:
    price = book.price_at(model, _END_OF_TIME)
    return price.provider if price is not None else None


_END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)  # the latest version of a price


def _refuse_unknown_keys(table: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    # A misspelt key (api_key_evn) would otherwise be ignored and its setting left unset.
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _required_str(table: Mapping[str, Any], key: str, section: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"every [[{section}]] entry needs a non-empty string {key!r}")
    return value


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a {kind.__name__}, not {value!r}") from exc
