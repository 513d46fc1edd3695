"""One mapping from the config's ``sync:`` keys to the engine's ``UserSettings``: same names, every
engine field a config key, and the per-user ``users[].settings`` keys a subset of both. A key
renamed on one side fails here (and in ``UserSettings.from_config``), never falls back to a default."""

from __future__ import annotations

from dataclasses import fields

import pytest

from exchanged.config import ReminderMinutesConfig, SyncConfig, UserSettingsConfig
from exchanged.engine import UserSettings
from exchanged.engine.settings import ReminderMinutes

# sync: keys the daemon itself uses (scheduling, limits), not the engine
DAEMON_ONLY = {"max_concurrent_users", "cycle_timeout_minutes", "psa_poll_seconds"}


def test_every_engine_setting_is_a_sync_key_of_the_same_name() -> None:
    engine = {f.name for f in fields(UserSettings)}
    config = set(SyncConfig.model_fields)
    assert engine <= config, f"engine fields without a sync: key: {sorted(engine - config)}"
    assert config - engine == DAEMON_ONLY, f"sync: keys the engine does not read: {sorted(config - engine)}"
    assert {f.name for f in fields(ReminderMinutes)} == set(ReminderMinutesConfig.model_fields)


def test_per_user_settings_narrow_engine_settings_only() -> None:
    assert set(UserSettingsConfig.model_fields) <= {f.name for f in fields(UserSettings)}


def test_the_defaults_agree() -> None:
    assert UserSettings.from_config(SyncConfig()) == UserSettings()


def test_a_missing_key_fails_instead_of_falling_back_to_a_default() -> None:
    class Renamed:  # the config's sync section with one key renamed
        def __getattr__(self, name: str) -> object:
            if name == "skip_private":
                raise AttributeError(name)
            return getattr(SyncConfig(), name)

    with pytest.raises(AttributeError, match="skip_private"):
        UserSettings.from_config(Renamed())
