"""A sampler is one module plus one registration: config, model name and table order follow."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from diffcls_plugin.config import DiffclsConfig, config_from_dict, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import (
    SAMPLERS,
    SAMPLERS_BY_MODEL,
    Evaluations,
    HierarchicalOptions,
    SamplerOptions,
    SamplerSpec,
    classify,
    register_sampler,
    unregister_sampler,
)
from diffcls_plugin.samplers.base import finish
from diffcls_plugin.workflows.leaderboard import Result, build_table, sampler_rank


@dataclass(frozen=True)
class ToyOptions(SamplerOptions):
    """Score every class at ``n_timesteps`` fixed timesteps."""

    section = "toy"
    PRESETS = {"quick": {"n_timesteps": 1}}
    n_timesteps: int = 2

    def validate(self, num_train_timesteps: int = 1000) -> None:
        self._check_int("n_timesteps", 1, num_train_timesteps)


def toy(n_classes: int, options: ToyOptions, num_train_timesteps: int = 1000):
    evals = Evaluations()
    yield from evals.ensure((c, t, 0) for c in range(n_classes) for t in range(options.n_timesteps))
    return finish(n_classes, range(n_classes), [], evals, n_rounds=1, stop_reason="schedule")


@pytest.fixture
def toy_sampler():
    spec = register_sampler(SamplerSpec("toy", ToyOptions, toy, model_name="diffusion-toy", summary="a test sampler"))
    try:
        yield spec
    finally:
        unregister_sampler("toy")


def test_a_registered_sampler_gets_a_config_section(toy_sampler, tmp_path):
    assert DiffclsConfig().toy == ToyOptions()  # every registered sampler gets its defaults
    path = tmp_path / "toy.yaml"
    path.write_text("loss: l1\ntoy: {n_timesteps: 5}\nhierarchical: {beam_factor: 2}\n")
    config = load_config(path)
    assert config.toy == ToyOptions(n_timesteps=5) and config.sampler_options("toy").n_timesteps == 5
    assert config.hierarchical.beam_factor == 2 and config.loss == "l1"
    assert config.to_dict()["toy"] == {"preset": None, "n_timesteps": 5}
    assert load_config(None, ["toy.preset=quick"]).toy == ToyOptions(n_timesteps=1, preset="quick")
    assert config_from_dict(config.to_dict()) == config
    assert DiffclsConfig(toy=ToyOptions(n_timesteps=5), loss="l1", hierarchical=HierarchicalOptions(beam_factor=2)) == config
    with pytest.raises(DiffclsError, match=r"toy\.n_timesteps must be between 1 and 1000, got 0"):
        config_from_dict({"toy": {"n_timesteps": 0}})
    with pytest.raises(DiffclsError, match=r"f\.yaml: unknown key 'toy\.n_timestep'\. Did you mean 'toy\.n_timesteps'\?"):
        config_from_dict({"toy": {"n_timestep": 3}}, "f.yaml")
    with pytest.raises(DiffclsError, match=r"unknown key 'tay'\. Did you mean 'toy'\? Valid keys: .*hierarchical, ttest, race, toy\."):
        config_from_dict({"tay": {}}, "f.yaml")


def test_a_registered_sampler_resolves_by_model_name_and_runs(toy_sampler):
    assert "diffusion-toy" in SAMPLERS_BY_MODEL and SAMPLERS_BY_MODEL.get("diffusion-toy").name == "toy"
    assert SAMPLERS_BY_MODEL.names() == ["diffusion-baseline", "diffusion-adaptive", "diffusion-hier", "diffusion-ttest", "diffusion-race", "diffusion-toy"]
    assert SAMPLERS_BY_MODEL.get("diffusion-toy") is toy_sampler is SAMPLERS.get("toy")
    options = DiffclsConfig().sampler_options(SAMPLERS_BY_MODEL.get("diffusion-toy").name)
    result = classify(toy_sampler.fn(3, options), lambda c, t, n: [float(ci != 1) for ci in c])
    assert result.prediction == 1 and result.n_evals == 3 * 2


def test_a_registered_sampler_takes_its_place_in_the_leaderboard(toy_sampler):
    def result(model: str) -> Result:
        return Result(f"{model}.json", "wds/digits", model, "tiny-digits", {"acc1": 0.5}, {"sampler": model})

    # diffusion-aaa is registered by no sampler: it sorts after every registered one
    models = ["diffusion-aaa", "diffusion-toy", "diffusion-hier", "diffusion-baseline", "diffusion-adaptive"]
    table = build_table([result(m) for m in models])
    assert table.rows == [f"{m} tiny-digits" for m in ["diffusion-baseline", "diffusion-adaptive", "diffusion-hier", "diffusion-toy", "diffusion-aaa"]]
    assert sampler_rank("diffusion-toy") == 5 and sampler_rank("diffusion-aaa") == 6


def test_unregistering_removes_every_trace(toy_sampler):
    unregister_sampler("toy")
    try:
        assert "toy" not in SAMPLERS and "diffusion-toy" not in SAMPLERS_BY_MODEL
        assert "toy" not in DiffclsConfig().to_dict()
        with pytest.raises(DiffclsError, match=r"unknown diffusion model 'diffusion-toy'\. Did you mean 'diffusion-ttest'\?"):
            SAMPLERS_BY_MODEL.get("diffusion-toy")
        with pytest.raises(DiffclsError, match=r"unknown key 'toy'"):
            config_from_dict({"toy": {}})
    finally:
        register_sampler(toy_sampler)  # the fixture unregisters it


def test_registration_checks_names():
    with pytest.raises(DiffclsError, match=r"section 'toy'; set ToyOptions\.section = 'other'"):
        register_sampler(SamplerSpec("other", ToyOptions, toy, model_name="diffusion-other", summary="x"))
    with pytest.raises(DiffclsError, match=r"starting with 'diffusion-'"):
        register_sampler(SamplerSpec("toy", ToyOptions, toy, model_name="toy", summary="x"))
    with pytest.raises(KeyError, match="registered twice"):
        register_sampler(SamplerSpec("toy", ToyOptions, toy, model_name="diffusion-hier", summary="x"))
    assert "toy" not in SAMPLERS  # a failed registration leaves nothing behind
    with pytest.raises(DiffclsError, match=r"unknown diffusion model 'diffusion-hierr'\. Did you mean 'diffusion-hier'\?"):
        SAMPLERS_BY_MODEL.get("diffusion-hierr")
