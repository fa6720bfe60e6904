"""Settings from LEDGER_* variables and the TOML file: precedence, validation, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import (
    DEFAULT_DATABASE_URL,
    ConfigError,
    ModelConfig,
    ProviderConfig,
    Settings,
    load_settings,
    normalise_database_url,
)

EXAMPLE_TOML = """
database_url = "postgresql://ledger@db.internal:5432/ledger"
port = 9000

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
timeout_s = 120

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
timeout_s = 300.5

[[models]]
name = "gpt-4.1-mini"
provider = "openai"
upstream_model = "gpt-4.1-mini-2025-04-14"

[[models]]
name = "claude-sonnet"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"

[[models]]
name = "gpt-4o"
provider = "openai"
"""

OPENAI_SECRET = "sk-proj-very-secret-0123456789"
ANTHROPIC_SECRET = "sk-ant-very-secret-9876543210"
ENV = {"OPENAI_API_KEY": OPENAI_SECRET, "ANTHROPIC_API_KEY": ANTHROPIC_SECRET}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_config_file_loads(tmp_path: Path) -> None:
    settings = load_settings(env=ENV, config_file=_write(tmp_path, EXAMPLE_TOML))

    assert settings.database_url == "postgresql+asyncpg://ledger@db.internal:5432/ledger"
    assert settings.port == 9000
    assert settings.providers == (
        ProviderConfig(
            name="openai",
            kind="openai",
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            api_key=OPENAI_SECRET,
            timeout_s=120.0,
        ),
        ProviderConfig(
            name="anthropic",
            kind="anthropic",
            base_url="https://api.anthropic.com",
            api_key_env="ANTHROPIC_API_KEY",
            api_key=ANTHROPIC_SECRET,
            timeout_s=300.5,
        ),
    )
    assert settings.models == (
        ModelConfig("gpt-4.1-mini", "openai", "gpt-4.1-mini-2025-04-14"),
        ModelConfig("claude-sonnet", "anthropic", "claude-sonnet-4-5"),
        ModelConfig("gpt-4o", "openai", "gpt-4o"),  # upstream_model defaults to the name
    )
    assert not settings.uses_mock_provider
    assert settings.config_file == str(tmp_path / "ledger.toml")


def test_the_config_file_can_be_named_by_ledger_config(tmp_path: Path) -> None:
    path = _write(tmp_path, EXAMPLE_TOML)
    settings = load_settings(env={**ENV, "LEDGER_CONFIG": str(path)})
    assert settings.port == 9000
    assert len(settings.providers) == 2


def test_no_file_and_no_environment_gives_the_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.uses_mock_provider
    assert settings.admin_key is None


def test_environment_variables_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'log_level = "debug"\nscheduler = true\n' + EXAMPLE_TOML)
    env = {
        **ENV,
        "LEDGER_PORT": "8123",
        "LEDGER_DATABASE_URL": "sqlite:////var/lib/ledger/ledger.db",
        "LEDGER_SCHEDULER": "off",
        "LEDGER_KEY_CACHE_TTL_S": "0.5",
        "LEDGER_LOG_LEVEL": "",  # empty means unset: the file's value stays
    }
    settings = load_settings(env=env, config_file=path)
    assert settings.port == 8123
    assert settings.database_url == "sqlite+aiosqlite:////var/lib/ledger/ledger.db"
    assert settings.scheduler is False
    assert settings.key_cache_ttl_s == 0.5
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("sqlite:///./ledger.db", "sqlite+aiosqlite:///./ledger.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_plain_database_urls_get_the_async_drivers(url: str, normalised: str) -> None:
    assert normalise_database_url(url) == normalised
    assert load_settings(env={"LEDGER_DATABASE_URL": url}).database_url == normalised


def test_provider_keys_come_from_their_variables_and_are_never_shown(tmp_path: Path) -> None:
    env = {**ENV, "LEDGER_ADMIN_KEY": "sk-admin-secret-1", "LEDGER_SECRET_KEY": "pepper-secret-2"}
    settings = load_settings(env=env, config_file=_write(tmp_path, EXAMPLE_TOML))
    assert settings.providers[0].api_key == OPENAI_SECRET
    assert settings.admin_key == "sk-admin-secret-1"
    for text in (repr(settings), str(settings), repr(settings.providers)):
        for secret in (OPENAI_SECRET, ANTHROPIC_SECRET, "sk-admin-secret-1", "pepper-secret-2"):
            assert secret not in text
    assert "OPENAI_API_KEY" in repr(settings)  # the variable's name is fine to show


def test_a_missing_provider_key_variable_leaves_the_key_unset(tmp_path: Path) -> None:
    settings = load_settings(env={}, config_file=_write(tmp_path, EXAMPLE_TOML))
    assert settings.providers[0].api_key is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("port = 'eighty'", "port must be a int"),
        ("scheduler = 'maybe'", "scheduler must be true or false"),
        ("[[providers]]\nkind = 'openai'", "non-empty string 'name'"),
        (
            "[[providers]]\nname = 'x'\nkind = 'azure'\nbase_url = 'https://x'",
            "kind must be one of openai, anthropic, mock",
        ),
        ("[[providers]]\nname = 'openai'\nbase_url = 'api.openai.com'", "base_url must be an http"),
        (
            "[[providers]]\nname = 'openai'\nbase_url = 'https://a'\ntimeout_s = 'soon'",
            "provider openai.timeout_s must be a float",
        ),
        (
            "[[providers]]\nname = 'mock'\n[[providers]]\nname = 'mock'",
            "provider names must be unique",
        ),
        ("[[models]]\nname = 'm'\nprovider = 'nowhere'", "unknown provider 'nowhere'"),
        ("[[models]]\nprovider = 'x'", "non-empty string 'name'"),
        ("providers = 'openai'", "[[providers]] must be a list of tables"),
        (
            "[[providers]]\nname = 'openai'\nbase_url = 'https://a'\napi_key_evn = 'K'",
            "provider 'openai': unknown setting(s) api_key_evn",
        ),
        (
            "[[providers]]\nname = 'mock'\n[[models]]\nname = 'm'\nprovider = 'mock'\nupstream = 'x'",
            "model 'm': unknown setting(s) upstream",
        ),
        ("this is not toml", "is not valid TOML"),
    ],
)
def test_bad_settings_are_a_config_error_saying_which_and_why(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=_write(tmp_path, toml))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LEDGER_PORT", "http", "LEDGER_PORT must be a int, not 'http'"),
        ("LEDGER_MIGRATE_ON_START", "2", "LEDGER_MIGRATE_ON_START must be true or false"),
        ("LEDGER_DB_POOL_SIZE", "1.5", "LEDGER_DB_POOL_SIZE must be a int"),
    ],
)
def test_bad_environment_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={name: value})


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(env={}, config_file=tmp_path / "nope.toml")


def test_a_bad_price_in_the_config_file_is_a_config_error_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[prices]]\nmodel = 'house'\nprovider = 'openai'\ninput = '-1'\n")
    with pytest.raises(ConfigError, match="house"):
        load_settings(env={}, config_file=path)


def test_a_price_in_the_config_file_is_kept_for_the_database(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[prices]]\nmodel = 'house'\nprovider = 'openai'\ninput = '0.125'\noutput = '0.5'\n",
    )
    settings = load_settings(env={}, config_file=path)
    assert [dict(p) for p in settings.price_overrides] == [
        {"model": "house", "provider": "openai", "input": "0.125", "output": "0.5"}
    ]


def test_a_misspelt_top_level_setting_is_refused_not_ignored(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text('databse_url = "postgresql://db/ledger"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="databse_url"):
        load_settings(env={}, config_file=config)


def test_what_a_provider_may_send_back_is_bounded_by_default_and_configurable() -> None:
    defaults = load_settings(env={})
    assert (
        defaults.max_response_bytes,
        defaults.max_event_bytes,
        defaults.max_decompression_ratio,
    ) == (32 * 1024 * 1024, 8 * 1024 * 1024, 100)
    env = {
        "LEDGER_MAX_RESPONSE_BYTES": "1048576",
        "LEDGER_MAX_EVENT_BYTES": "65536",
        "LEDGER_MAX_DECOMPRESSION_RATIO": "20",
    }
    settings = load_settings(env=env)
    assert (settings.max_response_bytes, settings.max_event_bytes) == (1048576, 65536)
    assert settings.max_decompression_ratio == 20
    with pytest.raises(ConfigError, match="max_event_bytes must be at least 1"):
        load_settings(env={"LEDGER_MAX_EVENT_BYTES": "0"})


# -- a price's provider comes from the model's route --------------------------------------

TWO_PROVIDERS = """
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "https://api.anthropic.com"
"""


def _price_toml(model: str) -> str:
    return f'\n[[prices]]\nmodel = "{model}"\ninput = "0.40"\noutput = "1.60"\n'


def _provider_of_price(tmp_path: Path, text: str) -> str:
    settings = load_settings(env={}, config_file=_write(tmp_path, text))
    (price,) = settings.price_overrides
    return price["provider"]


def test_a_price_without_provider_takes_the_provider_of_its_models_entry(tmp_path: Path) -> None:
    text = TWO_PROVIDERS + '\n[[models]]\nname = "house-model"\nprovider = "claude"\n'
    assert _provider_of_price(tmp_path, text + _price_toml("house-model")) == "claude"


def test_a_price_without_provider_of_a_catalog_model_keeps_the_catalogs(tmp_path: Path) -> None:
    assert _provider_of_price(tmp_path, TWO_PROVIDERS + _price_toml("gpt-4.1-mini")) == "openai"
    # A dated snapshot finds its model's entry.
    snapshot = _price_toml("claude-haiku-4-5-20251001")
    assert _provider_of_price(tmp_path, TWO_PROVIDERS + snapshot) == "anthropic"


def test_a_price_of_a_new_model_goes_to_the_only_provider(tmp_path: Path) -> None:
    assert _provider_of_price(tmp_path, _price_toml("house-model")) == "mock"
    one = TWO_PROVIDERS.split("\n\n[[providers]]")[0]
    assert _provider_of_price(tmp_path, one + _price_toml("house-model")) == "openai"


def test_a_price_of_a_new_model_with_several_providers_is_refused_naming_them(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, TWO_PROVIDERS + _price_toml("house-model"))
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, config_file=path)
    message = str(raised.value)
    assert "[[prices]] entry 'house-model'" in message
    assert "'openai', 'claude'" in message


def test_an_explicit_provider_is_kept(tmp_path: Path) -> None:
    text = TWO_PROVIDERS + _price_toml("house-model") + 'provider = "claude"\n'
    assert _provider_of_price(tmp_path, text) == "claude"


def test_allowed_models_come_from_a_toml_list_or_a_comma_separated_variable(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, 'allowed_models = ["gpt-4.1*", "claude-*"]\n')
    assert load_settings(env={}, config_file=path).allowed_models == ("gpt-4.1*", "claude-*")
    env = {"LEDGER_ALLOWED_MODELS": "o3, gpt-5*"}
    assert load_settings(env=env, config_file=path).allowed_models == ("o3", "gpt-5*")
    assert load_settings(env={}).allowed_models is None
    with pytest.raises(ConfigError, match="allowed_models"):
        load_settings(env={}, config_file=_write(tmp_path, "allowed_models = []\n"))
