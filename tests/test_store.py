"""The per-image resume store: round trips, concurrent writers, reuse in the model, kill and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import CLASSNAMES, TEMPLATES, random_images, run_clip_benchmark

from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.keys import image_key
from diffcls_plugin.samplers import BaselineOptions, HierarchicalOptions, SamplerResult
from diffcls_plugin.store import FILENAME, Outcome, OutcomeStore, committed, resume_enabled


def outcome(i: int) -> Outcome:
    ranking = tuple((i + k) % 5 for k in range(5))
    scores = tuple(math.nan if k == 4 else 0.1 * k + i for k in range(5))
    return Outcome(SamplerResult(ranking, scores, 10 + i, 3, "beam"), 20 + i, 0.5 * i)


def same(a: Outcome, b: Outcome) -> bool:
    ra, rb = a.result, b.result
    scores = all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(ra.scores, rb.scores))
    return (ra.ranking, ra.n_evals, ra.n_rounds, ra.stop_reason, a.n_unet_evals, a.seconds) == (
        rb.ranking,
        rb.n_evals,
        rb.n_rounds,
        rb.stop_reason,
        b.n_unet_evals,
        b.seconds,
    ) and scores


def test_outcomes_round_trip_exactly_and_the_first_writer_wins(tmp_path):
    store = OutcomeStore(tmp_path / "s.sqlite")
    assert store.journal_mode == "wal"
    for i in range(7):
        store.put("run-a", f"img{i}", outcome(i))
    store.put("run-a", "img0", outcome(5))  # a second writer of the same key changes nothing
    got = store.get_many("run-a", [f"img{i}" for i in range(9)])
    assert sorted(got) == [f"img{i}" for i in range(7)]
    assert all(same(got[f"img{i}"], outcome(i)) for i in range(7))
    assert store.get_many("run-b", ["img0"]) == {} and store.count("run-a") == 7
    store.close()
    reopened = OutcomeStore(tmp_path / "s.sqlite")  # committed: a new connection sees everything
    assert reopened.count() == 7
    assert committed(tmp_path / "s.sqlite") == 7 and committed(tmp_path / "none.sqlite") == 0  # as a watcher reads it


def _writer(path: str, offset: int, n: int) -> None:
    store = OutcomeStore(path)
    for i in range(offset, offset + n):
        store.put("run", f"img{i}", outcome(i))


def test_two_processes_writing_one_store_never_corrupt_it(tmp_path):
    """Two writer processes at once, with overlapping keys: every row lands once, intact."""
    path = str(tmp_path / "shared.sqlite")
    OutcomeStore(path).close()
    code = "import sys; sys.path.insert(0, sys.argv[1]); from test_store import _writer; _writer(sys.argv[2], int(sys.argv[3]), 400)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), path, str(offset)]) for offset in (0, 200)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = OutcomeStore(path)
    got = store.get_many("run", [f"img{i}" for i in range(600)])
    assert len(got) == 600 == store.count("run")
    assert all(same(got[f"img{i}"], outcome(i)) for i in range(600))


def test_the_store_is_switched_off_by_config_or_environment(monkeypatch):
    monkeypatch.setenv("DIFFCLS_RESUME", "1")
    assert resume_enabled(True) and not resume_enabled(False)
    for off in ("0", "off", "false", "no"):
        monkeypatch.setenv("DIFFCLS_RESUME", off)
        assert not resume_enabled(True)


def test_image_key_depends_on_the_pixels_not_on_the_batch():
    a, b = torch.rand(3, 8, 8) * 2 - 1, torch.rand(3, 8, 8) * 2 - 1
    assert image_key(a) == image_key(a.clone()) != image_key(b)
    assert image_key(a) != image_key(a[:, :4])  # the shape is part of the key


def test_the_model_reuses_finished_images_and_reports_their_original_cost(tmp_path, tiny_sd):
    store = OutcomeStore(tmp_path / FILENAME)
    config = DiffclsConfig(baseline=BaselineOptions(n_timesteps=6))
    images = random_images(5, seed=3)

    def fresh(cfg=config, seed=0):
        model = load_classifier("diffusion-baseline", str(tiny_sd), config=cfg, seed=seed, progress=False, store=store)
        model.prepare(CLASSNAMES, TEMPLATES)
        return model, torch.stack([model.transform(im) for im in images])

    first, pixels = fresh()
    reference = first.classify(pixels[:3])  # three images finish and are committed
    assert store.count(first.run_key) == 3 and first.stats.n_unet_evals_computed == 3 * 6 * 6
    second, _ = fresh()
    assert second.run_key == first.run_key
    results = second.classify(pixels)  # three from the store, two computed
    assert [r.ranking for r in results[:3]] == [r.ranking for r in reference]
    assert second.stats.n_images_computed == 2 and second.stats.n_unet_evals_computed == 2 * 6 * 6
    block = second.result_block()
    assert block["n_images"] == 5 and block["unet_evals_per_image"] == 6 * 6  # the cost of the result
    assert block["computed"] == {"n_images": 2, "n_images_from_store": 3, "unet_evals": 72, "seconds": second.stats.seconds_computed}
    assert block["store"]["run_key"] == second.run_key
    # the uninterrupted computation gives the same rankings
    alone = load_classifier("diffusion-baseline", str(tiny_sd), config=config, seed=0, progress=False, store=False)
    alone.prepare(CLASSNAMES, TEMPLATES)
    assert [r.ranking for r in alone.classify(pixels)] == [r.ranking for r in results]
    assert alone.store is None and alone.result_block()["store"] is None
    # what determines an outcome changes the run key: options, seed, prompts
    assert fresh(DiffclsConfig(baseline=BaselineOptions(n_timesteps=7)))[0].run_key != first.run_key
    assert fresh(seed=1)[0].run_key != first.run_key
    other, _ = fresh()
    other.prepare(CLASSNAMES, ["a picture of a {c}."])
    assert other.run_key != first.run_key
    # ... and what does not, does not
    assert (
        fresh(DiffclsConfig(baseline=BaselineOptions(n_timesteps=6), unet_batch_size=3, hierarchical=HierarchicalOptions(beam_factor=3)))[0].run_key
        == first.run_key
    )


def test_sigkill_then_the_same_command_computes_only_the_missing_images(tmp_path, tiny_sd):
    """The real `clip_benchmark eval` killed with SIGKILL mid-run, then rerun unchanged: only the
    missing images are computed and the metrics equal an uninterrupted run's."""
    from diffcls_plugin.data.wds_writer import write_wds_classification

    images = random_images(12, seed=5)
    labels = [i % len(CLASSNAMES) for i in range(12)]
    root = write_wds_classification(tmp_path / "data", images, labels, CLASSNAMES, TEMPLATES, n_shards=1)
    config = tmp_path / "diffcls.yaml"
    config.write_text("baseline:\n  n_timesteps: 100\n")  # 600 UNet evaluations per image

    def command(out: str) -> list[str]:
        return [
            "clip_benchmark",
            "eval",
            "--model",
            "diffusion-baseline",
            "--pretrained",
            str(tiny_sd),
            "--dataset",
            "wds/tiny",
            "--dataset_root",
            str(root),
            "--batch_size",
            "1",
            "--num_workers",
            "0",
            "--seed",
            "3",
            "--output",
            out,
        ]

    def env(cache: Path) -> dict[str, str]:
        # one torch thread each: the uninterrupted run goes on beside the other two (two processes
        # spinning two threads each on a small runner are several times slower)
        return dict(os.environ, DIFFCLS_CONFIG=str(config), DIFFCLS_CACHE=str(cache), DIFFCLS_RESUME="1", OMP_NUM_THREADS="1")

    # the uninterrupted run, with a store of its own, runs while the killed and the resumed run do
    whole_log = (tmp_path / "whole.log").open("w")
    whole = subprocess.Popen(
        command(str(tmp_path / "whole.json")), cwd=tmp_path, env=env(tmp_path / "other-cache"), stdout=subprocess.DEVNULL, stderr=whole_log, text=True
    )
    try:
        cache = tmp_path / "cache"
        killed = subprocess.Popen(command(str(tmp_path / "killed.json")), cwd=tmp_path, env=env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while committed(cache / FILENAME) < 4 and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert killed.poll() is None, "the run finished before it could be killed; give it more work"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        done_before = committed(cache / FILENAME)
        assert 4 <= done_before < len(images) and not (tmp_path / "killed.json").exists()

        resumed = run_clip_benchmark(
            *command(str(tmp_path / "resumed.json"))[1:], cwd=tmp_path, env=env(cache)
        )  # forked (conftest), as the console script runs
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        whole.wait(timeout=600)
    finally:  # not left running when an assertion above fails
        whole.kill()
        whole.wait()
        whole_log.close()
    assert whole.returncode == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a, b = json.loads((tmp_path / "resumed.json").read_text()), json.loads((tmp_path / "whole.json").read_text())
    assert a["metrics"] == b["metrics"]  # identical, not approximately equal
    assert a["diffcls"]["computed"]["n_images"] == len(images) - done_before, resumed.stderr[-3000:]
    assert a["diffcls"]["computed"]["n_images_from_store"] == done_before
    assert b["diffcls"]["computed"]["n_images"] == len(images)
    assert a["diffcls"]["unet_evals_per_image"] == b["diffcls"]["unet_evals_per_image"]  # the cost of the result
    assert a["diffcls"]["store"]["run_key"] == b["diffcls"]["store"]["run_key"]


def test_a_store_that_fails_mid_run_warns_once_and_the_run_goes_on(tmp_path, capsys):
    """A full disk or a corrupt page mid-run used to end the run with a traceback."""
    store = OutcomeStore(tmp_path / "s.sqlite")
    store.put("run", "a", outcome(1))

    class Full:
        def execute(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

    store._db = Full()
    store.put("run", "b", outcome(2))  # no exception
    store.put_errors("run", "b", torch.zeros(2, 3))
    assert store.get_many("run", ["a", "b"]) == {} and store.get_errors("run", ["a"]) == {}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING: the resume store" in line]
    assert len(warnings) == 1 and "database or disk is full" in warnings[0] and "goes on without it" in warnings[0]


def test_a_cache_path_that_is_a_file_is_a_clear_error(tmp_path):
    import pytest

    from diffcls_plugin.errors import DiffclsError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(DiffclsError, match=r"cannot open the resume store .*point \$DIFFCLS_CACHE at a writable"):
        OutcomeStore(blocker / "outcomes.sqlite")


def test_error_rows_outlive_edits_that_cannot_change_an_error():
    """A tune's table is kept across a new version or a sampler edit, not across another seed or grid."""
    from diffcls_plugin.keys import error_rows_key

    description = {"code": "a", "versions": {"diffcls-plugin": "0.2.0", "torch": "2.14.1"}, "sampler": "baseline", "options": {"n_timesteps": 32}, "seed": 0}
    key = error_rows_key(description, [15, 46])
    edited = {**description, "code": "b", "versions": {"diffcls-plugin": "0.3.0", "torch": "2.14.1"}, "options": {"n_timesteps": 8}}
    assert error_rows_key(edited, [15, 46]) == key
    assert error_rows_key({**description, "seed": 1}, [15, 46]) != key
    assert error_rows_key(description, [15, 47]) != key
    assert error_rows_key({**description, "versions": {"diffcls-plugin": "0.2.0", "torch": "2.15.0"}}, [15, 46]) != key


def test_a_damaged_store_is_moved_aside_when_it_opens_and_a_rerun_loses_nothing(tmp_path, capsys):
    """A torn header or a damaged page used to surface mid-run as sqlite3.DatabaseError (or as a
    writability problem): `PRAGMA quick_check` finds it when the store opens, the file is kept
    under another name and a fresh store is used."""
    header = tmp_path / "header" / FILENAME
    header.parent.mkdir()
    header.write_bytes(b"this is not an SQLite file" + bytes(5000))
    store = OutcomeStore(header)
    store.put("run", "a", outcome(1))
    assert same(store.get_many("run", ["a"])["a"], outcome(1))
    assert store.moved_aside is not None and store.moved_aside.read_bytes().startswith(b"this is not an SQLite file")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged (file is not a database); moved it to" in err and "started a fresh store" in err

    page = tmp_path / "page" / FILENAME
    page.parent.mkdir()
    full = OutcomeStore(page)
    for i in range(400):
        full.put("run", f"image-{i}", outcome(i))
    full.close()  # the last connection folds the WAL into the file
    data = bytearray(page.read_bytes())
    data[3 * 4096 : 5 * 4096] = bytes([0x5A]) * (2 * 4096)  # two data pages overwritten
    page.write_bytes(bytes(data))
    reopened = OutcomeStore(page)
    assert reopened.moved_aside is not None and reopened.count() == 0
    assert "is damaged (" in capsys.readouterr().err
    reopened.put("run", "image-0", outcome(0))  # the fresh store works
    assert reopened.count("run") == 1


def test_a_store_on_a_network_filesystem_uses_a_rollback_journal(tmp_path):
    """WAL's shared-memory index needs one host: on NFS, Lustre ... the store journals instead."""
    from diffcls_plugin import store as store_module

    mounts = tmp_path / "mounts"
    (tmp_path / "home").mkdir()
    (tmp_path / "local").mkdir()  # mount points exist; the cache folders below them not yet
    mounts.write_text(f"rootfs / ext4 rw 0 0\nserver:/home {tmp_path / 'home'} nfs4 rw 0 0\nscratch {tmp_path / 'local'} xfs rw 0 0\n")
    assert store_module.network_filesystem(tmp_path / "home" / "me" / ".cache", str(mounts)) == "nfs4"
    assert store_module.network_filesystem(tmp_path / "local" / "cache", str(mounts)) is None
    assert store_module.network_filesystem(tmp_path, str(tmp_path / "no-such-table")) is None
    original = store_module.network_filesystem
    store_module.network_filesystem = lambda folder: original(folder, str(mounts))
    try:
        remote = OutcomeStore(tmp_path / "home" / FILENAME)
        local = OutcomeStore(tmp_path / "local" / FILENAME)
    finally:
        store_module.network_filesystem = original
    assert (remote.filesystem, remote.journal_mode) == ("nfs4", "delete") and (local.filesystem, local.journal_mode) == (None, "wal")
    remote.put("run", "a", outcome(3))
    assert same(remote.get_many("run", ["a"])["a"], outcome(3))


def test_cache_problems_are_one_line_errors_before_the_weights_load(tmp_path, monkeypatch, tiny_sd):
    """A cache path that is a file (or a read-only folder) used to fail at the store's first use,
    after the weights had loaded."""
    import pytest

    from diffcls_plugin import adapters
    from diffcls_plugin.errors import DiffclsError

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("DIFFCLS_CACHE", str(blocker))
    monkeypatch.setenv("DIFFCLS_RESUME", "1")
    monkeypatch.setattr(adapters, "load_adapter", lambda *a, **k: pytest.fail("the weights loaded"))
    with pytest.raises(DiffclsError, match=r"cannot open the resume store .*a-file/outcomes.sqlite.*DIFFCLS_RESUME=0") as exc:
        load_classifier("diffusion-baseline", str(tiny_sd))
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 opens the store
    with pytest.raises(BaseException, match="the weights loaded"):
        load_classifier("diffusion-baseline", str(tiny_sd))
