"""The [llm] keys of this client: defaults, and the refusals that keep a bad value out."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.daemon.config import ConfigError, LLMConfig, load_config
from sidecar.narrator.llm import DEFAULT_MAX_TOKENS


def llm_config(tmp_path: Path, text: str) -> LLMConfig:
    path = tmp_path / "sidecar.toml"
    path.write_text("[llm]\n" + text)
    return load_config(str(path), env={}).llm


def test_defaults_and_values(tmp_path: Path) -> None:
    default = llm_config(tmp_path, "")
    assert (default.api_key_env, default.max_tokens) == (None, DEFAULT_MAX_TOKENS)
    chosen = llm_config(tmp_path, 'url = "https://llm.example:8443"\napi_key_env = "LLAMA_API_KEY"\nmax_tokens = 64\n')
    assert (chosen.url, chosen.api_key_env, chosen.max_tokens) == ("https://llm.example:8443", "LLAMA_API_KEY", 64)


@pytest.mark.parametrize(
    "text",
    [
        'api_key_env = "sk-the-key-itself pasted here"',  # a key where a variable's name belongs
        'api_key_env = "$LLAMA_API_KEY"',
        'api_key_env = ""',
        "max_tokens = 0",
        'api_key = "sk-123"',  # there is no key in the file, by design
    ],
)
def test_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        llm_config(tmp_path, text + "\n")
    assert "sk-" not in str(info.value)  # a key pasted in the wrong place is not echoed
