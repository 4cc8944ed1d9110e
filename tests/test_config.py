"""Config files and overrides: parsed into frozen dataclasses, every error names file, key and fix."""

from __future__ import annotations

import dataclasses
import json

import pytest

from diffcls_plugin.config import DiffclsConfig, config_from_dict, config_from_env, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import AdaptiveOptions, BaselineOptions, HierarchicalOptions, li_timesteps, schedule


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
        ("hierarchical: {preset: papr}\n", r"bad\.yaml: unknown hierarchical preset 'papr'\. Did you mean 'paper'\? Valid: paper\."),
        ("baseline: {preset: paper}\n", r"bad\.yaml: baseline\.preset 'paper': baseline has no presets"),
        ("hierarchical: {preset: paper, t_step: 8}\n", r"bad\.yaml: hierarchical\.t_step and hierarchical\.n_timesteps are both set"),
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


PAPER = dict(
    t_start=0,
    t_end=None,
    t_step=None,
    n_timesteps=32,
    n_noises=1,
    beam_factor=2,
    beam="fixed",
    min_beam=1,
    patience=None,
    direction="ascending",
)


def test_paper_preset_resolves_to_its_values_and_is_recorded(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text("hierarchical:\n  preset: paper\n")
    config = load_config(path)
    assert config.hierarchical == HierarchicalOptions(preset="paper", **PAPER)
    assert schedule(config.hierarchical) == li_timesteps(1000, 32)  # ascending: clean to noisy
    assert config.to_dict()["hierarchical"] == {"preset": "paper", **PAPER}
    assert load_config(None, [f"hierarchical.{k}={json.dumps(v)}" for k, v in config.to_dict()["hierarchical"].items()]) == config


def test_keys_next_to_a_preset_override_it():
    config = load_config(None, ["hierarchical.preset=paper", "hierarchical.beam_factor=4", "hierarchical.direction=descending"])
    assert config.hierarchical == HierarchicalOptions(preset="paper", **{**PAPER, "beam_factor": 4, "direction": "descending"})
    assert config.adaptive == AdaptiveOptions()  # other sections keep their defaults


def test_unknown_preset_built_in_code_fails_validation():
    with pytest.raises(DiffclsError, match="unknown hierarchical preset 'nope'"):
        DiffclsConfig(hierarchical=HierarchicalOptions(preset="nope")).validate()


def test_sampler_sections_build_compare_and_replace_like_fields():
    config = DiffclsConfig(loss="l1", hierarchical=HierarchicalOptions(beam_factor=2))
    assert config.hierarchical.beam_factor == 2 and config.baseline == BaselineOptions()
    assert config == DiffclsConfig(loss="l1", hierarchical=HierarchicalOptions(beam_factor=2))
    assert hash(config) == hash(DiffclsConfig(loss="l1", hierarchical=HierarchicalOptions(beam_factor=2)))
    assert config != DiffclsConfig(loss="l1", hierarchical=HierarchicalOptions(beam_factor=4))
    replaced = dataclasses.replace(config, hierarchical=HierarchicalOptions(beam_factor=4), dtype="fp32")
    assert (replaced.hierarchical.beam_factor, replaced.dtype, replaced.loss) == (4, "fp32", "l1")
    assert config.hierarchical.beam_factor == 2  # frozen: replace made a new config
    assert list(config.to_dict()) == [
        "loss",
        "prompts",
        "dtype",
        "image_size",
        "unet_batch_size",
        "allow_pickle",
        "compile",
        "resume",
        "on_corrupt",
        "prefilter",
        "timestep_weights",
        "tuned",
        "baseline",
        "adaptive",
        "hierarchical",
        "ttest",
        "race",
    ]
    with pytest.raises(DiffclsError, match=r"unknown option 'hierarchial'\. Did you mean 'hierarchical'\?"):
        DiffclsConfig(hierarchial=HierarchicalOptions())
    with pytest.raises(DiffclsError, match=r"the hierarchical options must be a HierarchicalOptions, got BaselineOptions"):
        DiffclsConfig(hierarchical=BaselineOptions())
    with pytest.raises(AttributeError):
        config.no_such_sampler  # noqa: B018
    with pytest.raises(DiffclsError, match=r"unknown sampler 'hierarchial'"):
        config.sampler_options("hierarchial")


def test_published_presets_of_li_et_al_and_clark_jaini():
    config = load_config(None, ["adaptive.preset=li-aircraft", "ttest.preset=clark-jaini"])
    assert (config.adaptive.to_keep, config.adaptive.n_samples) == ((20, 10, 5, 1), (20, 50, 100, 500))
    assert (config.ttest.p, config.ttest.min_samples, config.ttest.max_samples, config.ttest.weight_rate) == (2e-3, 20, 2000, 7.0)
    cifar = load_config(None, ["adaptive.preset=li-cifar10"]).adaptive
    assert (cifar.to_keep, cifar.n_samples) == ((5, 1), (50, 500))


def test_a_config_that_sets_a_removed_sampler_option_is_told_so():
    with pytest.raises(DiffclsError, match=r"my\.yaml: race\.screen was removed: race now always runs as it did at race\.screen: 1\.0.*beam_factor"):
        config_from_dict({"race": {"screen": 0.5}}, "my.yaml")
    with pytest.raises(DiffclsError, match=r"unknown key 'race\.alpah'\. Did you mean 'race\.alpha'\?"):
        config_from_dict({"race": {"alpah": 0.1}}, "my.yaml")  # an option that never existed is an ordinary unknown key


def test_a_yaml_alias_bomb_and_a_huge_file_are_refused_before_they_expand(tmp_path):
    levels = ["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"loss: [{', '.join(levels)}]\n")  # 9^8 strings once expanded, under a valid key
    assert bomb.stat().st_size < 400
    with pytest.raises(DiffclsError, match=r"is not valid YAML: more than 32 aliases"):
        load_config(bomb)
    nest = tmp_path / "nest.yaml"
    nest.write_text("loss: [&a [x,x,x], &b [*a,*a,*a], &c [*b,*b,*b]]\n")
    with pytest.raises(DiffclsError) as err:
        load_config(nest)
    assert "loss must be one of l2, l1, huber, got [[" in str(err.value) and len(str(err.value)) < 400  # the value is cut short
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * 2_000_000 + "\nloss: l1\n")
    with pytest.raises(DiffclsError, match=r"is 2,000,\d+ bytes, more than a config file needs"):
        load_config(huge)
