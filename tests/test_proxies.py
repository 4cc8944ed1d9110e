"""The proxy suite's committed models and data sets (bench/proxies): sizes, layout, splits kept apart."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from proxies import HOLDOUTS, PAIRS, VALIDATION_ONLY  # noqa: E402
from suite import read_members  # noqa: E402


def test_at_least_four_pairs_and_one_with_26_classes():
    assert len(PAIRS) >= 4
    n_classes = [len((p.root / "classnames.txt").read_text().split()) for p in PAIRS]
    assert max(n_classes) >= 26


ALL = PAIRS + VALIDATION_ONLY + HOLDOUTS


def test_held_out_pairs_share_nothing_with_the_suite():
    # a held-out pair's model and data are its own: no member of any choice was trained or read on them
    members = PAIRS + VALIDATION_ONLY
    suite_models, suite_data = {p.pretrained for p in members}, {p.data for p in members}
    assert HOLDOUTS
    for p in HOLDOUTS:
        assert p.pretrained not in suite_models and p.data not in suite_data
        assert p.name not in {q.name for q in members}
    assert len({p.name for p in ALL}) == len(ALL)


@pytest.mark.parametrize("pair", ALL, ids=[p.name for p in ALL])
def test_model_is_a_small_fp16_sd_layout_folder_trained_by_the_script(pair):
    from safetensors import safe_open

    folder = Path(pair.pretrained)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    weights = sorted(folder.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) <= 6_000_000
    for w in weights:
        with safe_open(str(w), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}, w
    record = json.loads((folder / "TRAINING.json").read_text())
    assert record["command"].startswith("python scripts/train_tiny_digits.py")
    assert record["data"]["train_on"] == "train" and record["data"]["tune_on"] == "val"


@pytest.mark.parametrize("pair", ALL, ids=[p.name for p in ALL])
def test_validation_and_test_splits_are_apart_and_labelled(pair):
    classnames = (pair.root / "classnames.txt").read_text().split()
    hashes = {}
    for split in ("val", "test"):
        samples = read_members(pair.root, split)
        labels = [int(s["cls"]) for s in samples.values()]
        assert set(labels) == set(range(len(classnames)))  # every class present, none outside
        hashes[split] = {hashlib.sha256(s["png"]).hexdigest() for s in samples.values()}
        if pair in PAIRS:  # no duplicate images within a split (clean font renders may repeat a glyph two families share)
            assert len(hashes[split]) == len(samples)
    assert not hashes["val"] & hashes["test"]


@pytest.mark.parametrize("pair", [p for p in ALL if "digits" not in p.name], ids=lambda p: p.name)
def test_letter_font_families_never_cross_splits(pair):
    families = json.loads((Path(pair.pretrained) / "TRAINING.json").read_text())["data"]["split"]["families"]
    train, val, test = (set(families[s]) for s in ("train", "val", "test"))
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)


def test_the_committed_suite_record_holds_exactly_the_grid():
    # every configuration of bench/suite.py's grid is a row of the committed record under the same
    # key (a changed default would silently rename rows and break the holdout script's choices)
    from suite import RESULTS, grid, key

    record = json.loads((RESULTS / "suite.json").read_text())
    assert [d["pair"] for d in record["pairs"]] == [p.name for p in PAIRS]
    assert [d["pair"] for d in record["validation_only"]] == [p.name for p in VALIDATION_ONLY]
    for d in record["pairs"] + record["validation_only"]:
        for split in d["splits"].values():
            assert set(split["rows"]) == {key(s, o) for s, o in grid()}
    assert all(set(d["splits"]) == {"val"} for d in record["validation_only"])  # their test splits are not read


def test_the_committed_choices_and_report_follow_from_the_recorded_rows():
    # every default, budget pick and rule comparison in suite.json, and suite.md itself, is what
    # bench/suite.py's rules give on the recorded validation rows (a changed rule needs a new run)
    from suite import RESULTS, check_record

    assert check_record(RESULTS) == 0


class _PlantedModel:
    """A stand-in for a pair's model: a planted error per (image, class, timestep, noise), lowest for
    the image's own class (``i % 5``) on average, so the configurations disagree on some images."""

    n_classes = 5

    def scorer(self, pixels):
        import random

        def score(image_idx, class_idx, timesteps, noise_idx):
            return [
                1.0 + 0.2 * (c != i % 5) + random.Random(f"{i} {c} {t} {n}").gauss(0, 0.3) for i, c, t, n in zip(image_idx, class_idx, timesteps, noise_idx)
            ]

        return score


def test_the_suite_gives_the_same_rows_however_the_samplers_are_split_over_processes():
    from suite import ErrorCache, evaluate_all, grid, key

    labels = [i % 5 for i in range(12)]
    configs = grid(quick=True)
    one = evaluate_all(configs, ErrorCache(_PlantedModel(), None), labels, 1000, workers=1)
    two = evaluate_all(configs, ErrorCache(_PlantedModel(), None), labels, 1000, workers=2)
    assert list(one) == [key(s, o) for s, o in configs]
    assert one == two
    assert len({r["correct"] for r in one.values()}) > 3  # the planted errors do separate the configurations


def test_the_suite_refuses_a_configuration_outside_the_filled_grid():
    from suite import ErrorCache, evaluate_all

    from diffcls_plugin.samplers.ttest import TTestOptions

    with pytest.raises(RuntimeError, match="FILLERS"):
        evaluate_all([("ttest", TTestOptions(timesteps="uniform"))], ErrorCache(_PlantedModel(), None), [0, 1, 2], 1000)


def test_the_shipped_defaults_are_the_ones_the_suite_chose():
    # the samplers' defaults in the code are the suite's picks in the committed record (adaptive is
    # left out: its shipped defaults are Li et al.'s own schedule, the suite's are scaled to 32 timesteps)
    from suite import RESULTS, key

    from diffcls_plugin.samplers import HierarchicalOptions
    from diffcls_plugin.samplers.race import RaceOptions
    from diffcls_plugin.samplers.ttest import TTestOptions

    chosen = json.loads((RESULTS / "suite.json").read_text())["summary"]["headline_keys"]
    assert chosen["hierarchical"] == key("hierarchical", HierarchicalOptions())
    assert chosen["race"] == key("race", RaceOptions())
    assert chosen["ttest"] == key("ttest", TTestOptions(max_samples=32))


def test_the_race_presets_for_small_budgets_are_the_suite_picks():
    # `race: {preset: eighth}` and `sixteenth` are the settings the suite's rule picks within 1/8 and
    # 1/16 of baseline-32's evaluations on every member's validation split
    from dataclasses import replace

    from suite import RESULTS
    from variants import from_recorded

    from diffcls_plugin.config import config_from_dict

    picks = json.loads((RESULTS / "suite.json").read_text())["summary"]["budget_settings"]["race"]
    for name, budget in (("sixteenth", 1 / 16), ("eighth", 1 / 8)):
        options = config_from_dict({"race": {"preset": name}}).sampler_options("race")
        assert options.preset == name
        # the pick as recorded (the race's removed options at their former defaults), read back
        assert options == replace(from_recorded("race", picks[str(budget)]["options"]), preset=name)
