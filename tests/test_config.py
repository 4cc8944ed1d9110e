"""Config files and overrides: parsed into frozen dataclasses, every error names file, key and fix."""

from __future__ import annotations

import dataclasses
import json

import pytest

from diffcls_plugin.config import DiffclsConfig, config_from_env, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import AdaptiveOptions


def test_defaults_validate_and_round_trip_through_json(tmp_path):
    config = DiffclsConfig()
    config.validate()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load_config(path) == config


def test_yaml_file_with_sections_and_overrides(tmp_path):
    path = tmp_path / "aircraft.yaml"
    path.write_text(
        "loss: l2\nprompts: ensemble\nadaptive:\n  to_keep: [20, 10, 5, 1]\n  n_samples: [20, 50, 100, 500]\n"
        "hierarchical:\n  beam_factor: 3\n  direction: descending\n"
    )
    config = load_config(path, ["hierarchical.patience=4", "loss=l1"])
    assert config.adaptive == AdaptiveOptions(to_keep=(20, 10, 5, 1), n_samples=(20, 50, 100, 500))
    assert config.hierarchical.beam_factor == 3
    assert config.hierarchical.patience == 4
    assert config.hierarchical.direction == "descending"
    assert config.loss == "l1" and config.prompts == "ensemble"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loss = "l2"


def test_t_step_replaces_the_default_count():
    config = load_config(None, ["hierarchical.t_step=50"])
    assert config.hierarchical.t_step == 50 and config.hierarchical.n_timesteps is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("hierarchical:\n  beam_factr: 2\n", r"bad\.yaml: unknown key 'hierarchical\.beam_factr'\. Did you mean 'hierarchical\.beam_factor'\?"),
        ("los: l1\n", r"bad\.yaml: unknown key 'los'\. Did you mean 'loss'\?"),
        ("loss: l3\n", r"bad\.yaml: loss must be one of l2, l1, huber, got 'l3'"),
        ("adaptive:\n  to_keep: [5, 2]\n", r"bad\.yaml: adaptive\.to_keep must end with 1"),
        ("hierarchical: 3\n", r"bad\.yaml: hierarchical must be a mapping"),
        ("unet_batch_size: 0\n", r"unet_batch_size must be a positive integer"),
        ("loss: [l1\n", r"is not valid YAML"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DiffclsError, match=message):
        load_config(path)


def test_missing_file_and_malformed_override():
    with pytest.raises(DiffclsError, match="does not exist"):
        load_config("no/such/config.yaml")
    with pytest.raises(DiffclsError, match="KEY=VALUE"):
        load_config(None, ["beam_factor"])


def test_config_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("baseline:\n  n_timesteps: 8\n")
    monkeypatch.setenv("DIFFCLS_CONFIG", str(path))
    assert config_from_env().baseline.n_timesteps == 8
    monkeypatch.delenv("DIFFCLS_CONFIG")
    assert config_from_env() == DiffclsConfig()
