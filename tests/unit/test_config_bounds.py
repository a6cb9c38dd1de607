"""Upper and lower bounds of the configuration's sizes and times: one ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from coord.config import ConfigError, load_config


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "coord.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("[storage]\nlog_map_bytes = 4096\n", "storage.log_map_bytes", "4096"),
        ("[storage]\nlog_map_bytes = 1048575\n", "storage.log_map_bytes", "1048575"),
        (f"[storage]\nlog_map_bytes = {2**60}\n", "storage.log_map_bytes", str(2**60)),
        (f"[server]\ntick_ms = {10**14}\n", "server.tick_ms", str(10**14)),
        ("[server]\ntick_ms = 60001\n", "server.tick_ms", "60001"),
        (f"[sessions]\nmin_timeout_ms = {10**12}\n", "sessions.min_timeout_ms", str(10**12)),
        ("[sessions]\nmax_timeout_ms = 86400001\n", "sessions.max_timeout_ms", "86400001"),
        (f"[ensemble]\ntick_ms = {10**14}\n", "ensemble.tick_ms", str(10**14)),
        ("[ensemble]\ninit_limit_ticks = 10001\n", "ensemble.init_limit_ticks", "10001"),
        ("[ensemble]\nsync_limit_ticks = 10001\n", "ensemble.sync_limit_ticks", "10001"),
    ],
)
def test_values_out_of_range_name_the_key_and_the_bound(tmp_path: Path, text: str, key: str, shown: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert shown in message
    assert "\n" not in message


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "coord.toml"
    path.write_text(
        "[server]\ntick_ms = 60000\n"
        "[sessions]\nmin_timeout_ms = 86400000\nmax_timeout_ms = 86400000\n"
        "[storage]\nlog_map_bytes = 1048576\n"
    )
    config = load_config(path)
    assert (config.tick_ms, config.max_session_timeout_ms, config.log_map_bytes) == (60000, 86400000, 1 << 20)
    config = load_config(overrides={"storage.log_map_bytes": str(1 << 40)})
    assert config.log_map_bytes == 1 << 40


def test_the_largest_tick_still_derives_valid_session_bounds() -> None:
    config = load_config(overrides={"server.tick_ms": 60000})
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (120_000, 1_200_000)


def test_an_override_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^server\.tick_ms: .*60000"):
        load_config(overrides={"server.tick_ms": str(10**14)})
