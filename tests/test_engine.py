"""The per-batch engine without the harness or a model: a planted scorer, a store, a planted
prefilter and a simulated two-rank torchrun run."""

from __future__ import annotations

import math

import pytest
import torch

from diffcls_plugin import distributed
from diffcls_plugin.classifier.engine import ClassifyEngine, Share
from diffcls_plugin.samplers import SAMPLERS, BaselineOptions, HierarchicalOptions, classify
from diffcls_plugin.store import OutcomeStore

N_CLASSES = 6


class PlantedScorer:
    """Errors from each image's first pixel: image ``b``'s true class is ``int(images[b, 0, 0, 0])``
    (error 0 at every timestep); class ``c`` otherwise errs by ``1 + c / 10`` plus a timestep wobble."""

    def __init__(self, images, batch_size: int = 8) -> None:
        self.truth = [int(x) for x in images[:, 0, 0, 0].tolist()]
        self.unet_evals = [0] * len(images)
        self.batch_size = batch_size
        self.calls = 0

    def __call__(self, image_idx, class_idx, timesteps, noise_idx):
        self.calls += 1
        for i in image_idx:
            self.unet_evals[i] += 1
        return [0.0 if c == self.truth[i] else 1.0 + c / 10 + 0.01 * math.sin(t) for i, c, t in zip(image_idx, class_idx, timesteps)]


def images_of(truth: list[int]) -> torch.Tensor:
    x = torch.zeros(len(truth), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(truth, dtype=torch.float32)
    x[:, 1] = torch.arange(len(truth)).view(-1, 1, 1).float()  # distinct pixels: distinct store keys
    return x


def engine(sampler: str = "hierarchical", options=None, **kwargs) -> tuple[ClassifyEngine, list[PlantedScorer]]:
    spec = SAMPLERS.get(sampler)
    options = options or spec.options_cls()
    made: list[PlantedScorer] = []

    def make_scorer(pixels):
        made.append(PlantedScorer(pixels))
        return made[-1]

    return ClassifyEngine(N_CLASSES, make_scorer, lambda k: spec.fn(k, options, 1000), **kwargs), made


TRUTH = [3, 0, 5, 1]


def test_the_engine_gives_each_image_its_samplers_result_with_one_flat_call_per_round():
    eng, made = engine(options=HierarchicalOptions(n_timesteps=8))
    report = eng.classify(images_of(TRUTH))
    assert [r.prediction for r in report.results] == TRUTH
    alone = [
        classify(
            SAMPLERS.get("hierarchical").fn(N_CLASSES, HierarchicalOptions(n_timesteps=8), 1000),
            lambda c, t, n, y=y: PlantedScorer(images_of([y]))([0] * len(c), c, t, n),
        )
        for y in TRUTH
    ]
    assert [r.ranking for r in report.results] == [r.ranking for r in alone]
    assert [r.n_evals for r in report.results] == [r.n_evals for r in alone]
    assert report.n_computed == 4 and report.shares == [4]
    assert report.unet_evals_computed == sum(made[0].unet_evals) == sum(r.n_evals for r in report.results)
    assert made[0].calls == 8  # one flat call per timestep for all four images
    assert [o.n_unet_evals for o in report.outcomes] == made[0].unet_evals


def test_stored_images_are_not_recomputed_and_new_ones_are_committed(tmp_path):
    store = OutcomeStore(tmp_path / "o.sqlite")
    eng, made = engine("baseline", BaselineOptions(n_timesteps=4), store=store, run_key="run-a")
    first = eng.classify(images_of(TRUTH[:2]))
    assert first.n_computed == 2
    second = eng.classify(images_of(TRUTH))  # the first two images again, then two new ones
    assert second.n_computed == 2 and len(made) == 2 and len(made[1].unet_evals) == 2  # only the new ones scored
    assert [r.ranking for r in second.results[:2]] == [r.ranking for r in first.results]
    assert [o.n_unet_evals for o in second.outcomes[:2]] == [o.n_unet_evals for o in first.outcomes]  # cost as spent
    again = eng.classify(images_of(TRUTH))
    assert again.n_computed == 0 and again.unet_batch_size is None and len(made) == 2
    other, _ = engine("baseline", BaselineOptions(n_timesteps=4), store=store, run_key="run-b")
    assert other.classify(images_of(TRUTH[:1])).n_computed == 1  # another run key shares nothing


class PlantedPrefilter:
    def __init__(self, orders):
        self.orders = orders

    def order(self, pixels):
        return [self.orders[int(y)] for y in pixels[:, 0, 0, 0].tolist()]


def test_a_prefilter_limits_the_sampler_to_its_top_k_and_maps_the_ranking_back():
    # each image's true class first in the prefilter's order, then the rest reversed
    orders = {y: [y] + [c for c in reversed(range(N_CLASSES)) if c != y] for y in range(N_CLASSES)}
    eng, made = engine("baseline", BaselineOptions(n_timesteps=2), prefilter=PlantedPrefilter(orders), top_k=3)
    report = eng.classify(images_of(TRUTH))
    assert [r.prediction for r in report.results] == TRUTH
    for y, result in zip(TRUTH, report.results):
        top = orders[y][:3]
        assert set(result.ranking[:3]) == set(top) and list(result.ranking[3:]) == orders[y][3:]
        assert all(math.isnan(result.scores[c]) for c in orders[y][3:])  # never scored
        assert all(not math.isnan(result.scores[c]) for c in top)
    assert sum(made[0].unet_evals) == 4 * 3 * 2  # k classes x 2 timesteps per image


def test_torchrun_shares_are_gathered_into_batch_order(monkeypatch):
    x = images_of(TRUTH)
    single = engine(options=HierarchicalOptions(n_timesteps=8))[0].classify(x)
    rank1, _ = engine(options=HierarchicalOptions(n_timesteps=8))
    mine1 = distributed.my_share(len(x), 1, 2)
    other = rank1.classify_here(x[mine1])
    eng, _ = engine(options=HierarchicalOptions(n_timesteps=8))
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    monkeypatch.setattr(distributed, "broadcast", lambda obj: obj)
    gathered = []

    def gather(share):
        gathered.append(share)
        return [share, Share(share.digest, mine1, other)]

    monkeypatch.setattr(distributed, "gather", gather)
    report = eng.classify(x)
    assert isinstance(gathered[0], Share) and gathered[0].positions == distributed.my_share(len(x), 0, 2)
    assert [r.ranking for r in report.results] == [r.ranking for r in single.results]
    assert report.shares == [2, 2] and report.n_computed == 4
    assert report.unet_evals_computed == single.unet_evals_computed

    def gather_other_batch(share):
        return [share, Share("another batch", mine1, other)]

    monkeypatch.setattr(distributed, "gather", gather_other_batch)
    with pytest.raises(Exception, match="ranks loaded different batches"):
        eng.classify(x)


def test_under_torchrun_rank_0_alone_reads_and_commits_the_store(monkeypatch, tmp_path):
    """Rank 0 looks the whole batch up, the other ranks compute only unstored images, and rank 0
    commits their outcomes after the gather: one process touches the file (SQLite's WAL needs one host)."""
    x = images_of(TRUTH + [2, 4])
    x[:, 2] = torch.arange(len(x)).view(-1, 1, 1) / 10  # distinct store keys (pixels are quantised in [-1, 1])
    store = OutcomeStore(tmp_path / "s.sqlite")
    first, _ = engine(options=HierarchicalOptions(n_timesteps=8), store=store, run_key="run")
    first.classify(x[:2])  # images 0 and 1 are stored
    single = engine(options=HierarchicalOptions(n_timesteps=8))[0].classify(x)
    eng, made = engine(options=HierarchicalOptions(n_timesteps=8), store=store, run_key="run")
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    told = []
    monkeypatch.setattr(distributed, "broadcast", lambda obj: told.append(obj) or obj)
    other_rank, _ = engine(options=HierarchicalOptions(n_timesteps=8))  # rank 1 has no store
    other = {}

    def gather(share):
        positions = [3, 5]  # rank 1's share of the unstored positions 2, 3, 4, 5
        other["part"] = other_rank._compute(x, positions, None)
        return [share, Share(share.digest, positions, other["part"])]

    monkeypatch.setattr(distributed, "gather", gather)
    report = eng.classify(x)
    assert sorted(told[0]) == [0, 1]  # rank 0 told the others which positions are stored
    assert len(made) == 1 and len(made[0].truth) == 2  # rank 0 computed positions 2 and 4 only
    assert report.n_computed == 4 and report.shares == [2 + 2, 2]
    assert [r.ranking[0] for r in report.results] == TRUTH + [2, 4]
    assert store.count("run") == 6  # rank 1's images were committed by rank 0
    assert [r.ranking for r in report.results] == [r.ranking for r in single.results]
