"""load_config: defaults < TOML file < SIDECAR_* environment < flags, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.daemon.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return str(path)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "/from/file"\nsocket = "/file.sock"\n[llm]\nurl = "http://file:1"\n')
    assert load_config(path, env={}).data_dir == "/from/file"
    env = {"SIDECAR_DATA_DIR": "/from/env", "SIDECAR_LLM_URL": "http://llm:8080", "SIDECAR_LLM_MODEL": "qwen"}
    config = load_config(path, env=env)
    assert (config.data_dir, config.socket) == ("/from/env", "/file.sock")
    assert (config.llm.url, config.llm.model) == ("http://llm:8080", "qwen")
    flagged = load_config(path, data_dir="/from/flag", socket="/flag.sock", env=env)
    assert (flagged.data_dir, flagged.socket_path) == ("/from/flag", "/flag.sock")


def test_the_environment_names_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[controller]\nmin_gap_s = 1.5\n")
    assert load_config(env={"SIDECAR_CONFIG": path}).controller.min_gap_s == 1.5


def test_llm_from_the_environment_keeps_the_file_s_other_llm_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[llm]\ntimeout_s = 3.0\nnarrator = true\n")
    config = load_config(path, env={"SIDECAR_LLM_URL": "http://llm:8080"})
    assert (config.llm.url, config.llm.timeout_s, config.llm.narrator) == ("http://llm:8080", 3.0, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown keys ['bogus']"),
        ("[server]\nmax_mesage_bytes = 5\n", "max_mesage_bytes"),
        ("[server]\nmax_message_bytes = -1\n", "max_message_bytes"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_an_error_that_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, text), env={})


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(str(tmp_path / "nope.toml"), env={})


def test_a_config_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    # Found by ./dev fuzz: invalid UTF-8 escaped tomllib as UnicodeDecodeError (a traceback).
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[server]\nlog_lev\xe5l = "debug"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad), env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(tmp_path), env={})  # a directory


def test_a_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log_level.*expected one of 'debug', 'info', 'warning', 'error'"):
        load_config(write(tmp_path, '[server]\nlog_level = "verbose"\n'), env={})


def test_the_event_loop_is_uvloop_where_installed_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.daemon.server import use_uvloop

    assert load_config(write(tmp_path, ""), env={}).server.event_loop == "auto"
    assert use_uvloop("asyncio") is False
    assert use_uvloop("auto") is True and use_uvloop("uvloop") is True  # a dependency here
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # as where it is not installed
    assert use_uvloop("auto") is False
    with pytest.raises(ConfigError, match="event_loop = 'uvloop', but uvloop is not installed"):
        use_uvloop("uvloop")
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(write(tmp_path, '[server]\nevent_loop = "trio"\n'), env={})
