from __future__ import annotations

import pytest

from core.settings import ENV_NAMES, Settings, SettingsError


def test_defaults_follow_the_registry() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8082
    assert settings.pool_max("server") == 8 and settings.pool_max("publisher") == 2
    assert settings.system_pools == ["system"]
    assert settings.target_database_url == settings.database_url


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "NOETL_NATS_STREAM_UPDATE": "yes",
            "NOETL_PUBLISHER_POLL_SECONDS": "0.5",
            "NOETL_SYSTEM_POOL": "system, default",
            "NOETL_DB_POOL_MAX": "5",
        }
    )
    assert settings.nats_stream_update is True
    assert settings.publisher_poll_seconds == 0.5
    assert settings.system_pools == ["system", "default"]
    assert settings.pool_max("server") == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOETL_NATS_STREAM_UPDATE", "maybe"),
        ("NOETL_PORT", "http"),
        ("NOETL_PUBLISHER_BATCH_SIZE", "0"),
        ("NOETL_LOG_FORMAT", "xml"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_secrets_are_masked() -> None:
    settings = Settings.from_env(
        {
            "NOETL_DATABASE_URL": "postgresql://u:hunter2@db/noetl",
            "NOETL_API_TOKENS": "tok",
        }
    )
    shown = str(settings.masked())
    assert "hunter2" not in shown and "tok'" not in shown
    assert "NOETL_EVENT_SHARD_COUNT" in ENV_NAMES
