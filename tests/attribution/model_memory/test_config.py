"""Reading a config.json, and naming its fields in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from attribution.model_memory.config import ConfigError, UnsupportedModel, load_config
from attribution.model_memory.kv import kv_sizing
from tests.attribution.model_memory.configs import VLLM_FIXTURE


def test_load_config_reads_a_file_or_a_directory_holding_config_json() -> None:
    assert load_config(VLLM_FIXTURE) == load_config(VLLM_FIXTURE / "config.json")
    assert load_config(VLLM_FIXTURE)["num_hidden_layers"] == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{broken", "not valid JSON"), ("[1]", "not a JSON object")],
)
def test_load_config_errors_name_the_path(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_load_config_of_a_directory_without_one_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path} holds no config.json"):
        load_config(tmp_path)


def test_a_nested_text_config_names_its_fields_with_their_prefix() -> None:
    with pytest.raises(UnsupportedModel, match=r"text_config\.num_hidden_layers is missing"):
        kv_sizing({"model_type": "llava", "text_config": {"model_type": "llama"}})
