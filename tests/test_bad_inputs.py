"""Every bad input gets one `diffcls: error:` line naming it and the fix, before weights load or
images are scored; inputs that used to give silently wrong numbers are converted or refused."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, random_images
from PIL import Image

from diffcls_plugin import register
from diffcls_plugin.data.images import decode_image, to_rgb
from diffcls_plugin.data.wds_writer import write_wds_classification
from diffcls_plugin.errors import DiffclsError

register()
from clip_benchmark import cli as harness_cli  # noqa: E402


def harness_args(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", *argv])
    _, args = harness_cli.get_parser_args()
    return args


def run_harness(argv, monkeypatch, load=False):
    """The harness's `eval` in this process; returns the SystemExit text (None when it ran)
    and whether weights were loaded."""
    loaded = []
    if not load:
        monkeypatch.setattr("diffcls_plugin.harness.patches.load_classifier", lambda *a, **k: loaded.append(1))
    args = harness_args(["eval", *argv], monkeypatch)
    try:
        harness_cli.main_eval(args)
    except SystemExit as exc:
        return str(exc.code), loaded
    return None, loaded


@pytest.fixture()
def wds(tmp_path):
    """A small local webdataset: 8 images, 6 classes, 2 shards (a fresh copy per test)."""
    images = random_images(8, seed=1)
    labels = [i % len(CLASSNAMES) for i in range(8)]
    return write_wds_classification(tmp_path / "ds", images, labels, CLASSNAMES, TEMPLATES, n_shards=2)


def common(tiny_sd, root, out):
    return [
        "--model",
        "diffusion-baseline",
        "--pretrained",
        str(tiny_sd),
        "--dataset",
        "wds/ds",
        "--dataset_root",
        str(root),
        "--num_workers",
        "0",
        "--output",
        str(out),
    ]


def assert_one_line(text, pattern):
    assert text is not None, "the run did not fail"
    assert text.startswith("diffcls: error: ") and "\n" not in text, text
    assert re.search(pattern, text), text


def test_output_folder_that_does_not_exist(monkeypatch, tmp_path, tiny_sd, wds):
    text, loaded = run_harness(common(tiny_sd, wds, tmp_path / "missing" / "r.json"), monkeypatch)
    assert_one_line(text, r"folder '.*missing' does not exist; create it first \(mkdir -p")
    assert loaded == []


def test_unknown_dataset_and_webdataset_without_root(monkeypatch, tmp_path, tiny_sd):
    text, loaded = run_harness(
        ["--model", "diffusion-hier", "--pretrained", str(tiny_sd), "--dataset", "cifar11", "--output", str(tmp_path / "r.json")], monkeypatch
    )
    assert_one_line(text, r"--dataset cifar11 .*cannot be built: Unsupported dataset: cifar11.*check the dataset name")
    text, _ = run_harness(
        ["--model", "diffusion-hier", "--pretrained", str(tiny_sd), "--dataset", "wds/mine", "--output", str(tmp_path / "r.json")], monkeypatch
    )
    assert_one_line(text, r"--dataset wds/mine is a webdataset, but --dataset_root 'root' has no test/nshards\.txt")
    assert loaded == []


def test_nshards_larger_than_the_shards_present(monkeypatch, tmp_path, tiny_sd, wds):
    (wds / "test" / "nshards.txt").write_text("5\n")
    text, loaded = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"says 5 shards but 2\.tar, 3\.tar, 4\.tar are missing .*restore the shards or fix nshards\.txt")
    assert loaded == []


def test_labels_outside_the_class_names_are_an_error(monkeypatch, tmp_path, tiny_sd, wds):
    (wds / "classnames.txt").write_text("cat\ndog\nbird\n")  # labels go up to 5
    text, loaded = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"classnames\.txt: labels 3, 4, 5 have no class \(3 class names, so labels 0\.\.2\)")
    assert loaded == []


def test_blank_class_names(monkeypatch, tmp_path, tiny_sd, wds):
    (wds / "classnames.txt").write_text("cat\n\ndog\nbird\nfish\ncar\ntree\n")
    text, loaded = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"blank class names \(lines 2\); remove the blank lines")
    (wds / "classnames.txt").write_text("\n")
    text, _ = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"has no classes")
    assert loaded == []


def test_trailing_blank_class_lines_are_no_classes(monkeypatch, tmp_path, tiny_sd, wds):
    (wds / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n\n\n")
    monkeypatch.setenv("DIFFCLS_CONFIG", str(_config(tmp_path, "baseline:\n  n_timesteps: 2\n")))
    text, _ = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch, load=True)
    assert text is None
    assert json.loads((tmp_path / "r.json").read_text())["diffcls"]["n_classes"] == len(CLASSNAMES)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "diffcls.yaml"
    path.write_text(text)
    return path


def test_offline_hub_id_and_damaged_weights_fail_before_loading(monkeypatch, tmp_path, tiny_sd, wds):
    text, loaded = run_harness(
        [*common(tiny_sd, wds, tmp_path / "r.json")[:2], "--pretrained", "someone/not-cached", *common(tiny_sd, wds, tmp_path / "r.json")[4:]], monkeypatch
    )
    assert_one_line(text, r"'someone/not-cached'.*is not in the local hub cache and HF_HUB_OFFLINE is set; download it first")
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_sd, damaged)
    weights = next((damaged / "unet").glob("*.safetensors"))
    weights.write_bytes(b"\x00\x01garbage")
    text, _ = run_harness(common(damaged, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"the weights file '.*unet.*\.safetensors' is not a readable safetensors file .*download or save the checkpoint again")
    assert loaded == []


def test_sixteen_bit_images_are_rescaled_not_saturated():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = np.asarray(decode_image(buffer.getvalue()))
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255]  # PIL's own convert("RGB") gives 0, 255, 255, 255
    assert np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))[0, :, 0].tolist() != [0, 1, 128, 255]


def _corrupt_one_png(root: Path) -> str:
    """Truncate the first PNG of shard 0; return its key."""
    shard = root / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = None
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if key is None and member.name.endswith(".png"):
                key, data = member.name[:-4], data[:40]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return key


def test_a_corrupt_image_is_named_skipped_and_counted_or_stops_the_run(monkeypatch, tmp_path, tiny_sd, wds, capsys):
    key = _corrupt_one_png(wds)
    monkeypatch.setenv("DIFFCLS_CONFIG", str(_config(tmp_path, "baseline:\n  n_timesteps: 2\n")))
    text, _ = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch, load=True)
    assert text is None
    err = capsys.readouterr().err
    assert re.search(rf"diffcls: skipped the corrupt image '{key}' in shard .*0\.tar", err), err
    block = json.loads((tmp_path / "r.json").read_text())["diffcls"]
    assert block["n_images"] == 7 and block["n_images_skipped"] == 1
    monkeypatch.setenv("DIFFCLS_CONFIG", str(_config(tmp_path, "baseline:\n  n_timesteps: 2\non_corrupt: stop\n")))
    text, _ = run_harness(common(tiny_sd, wds, tmp_path / "r2.json"), monkeypatch, load=True)
    assert_one_line(text, rf"corrupt image '{key}' in shard .*0\.tar: .*set 'on_corrupt: skip'")
    assert not (tmp_path / "r2.json").exists()


def test_non_finite_errors_name_the_real_cause(tiny_sd, tmp_path):
    from diffcls_plugin.classifier import load_classifier
    from diffcls_plugin.config import DiffclsConfig
    from diffcls_plugin.samplers import BaselineOptions

    model = load_classifier("diffusion-baseline", str(tiny_sd), config=DiffclsConfig(baseline=BaselineOptions(n_timesteps=2)), progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    with torch.no_grad():
        next(model.adapter.unet.parameters()).fill_(float("nan"))
    pixels = torch.stack([model.transform(im) for im in random_images(1)])
    with pytest.raises(DiffclsError, match=r"UNet's weights contain NaN or inf values: the checkpoint is damaged") as exc:
        model.classify(pixels)
    assert "fp16" not in str(exc.value)  # an fp32 run is not told to leave fp16


def test_image_size_must_suit_the_vae(monkeypatch, tmp_path, tiny_sd, wds):
    monkeypatch.setenv("DIFFCLS_CONFIG", str(_config(tmp_path, "image_size: 17\n")))
    text, loaded = run_harness(common(tiny_sd, wds, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"image_size 17 must be a multiple of the VAE's downsampling factor 2 for --pretrained '.*tiny-sd'; use 16 or 18")
    assert loaded == []


@pytest.mark.parametrize("batch_size", ["0", "-4"])
def test_a_batch_size_below_one_is_refused_before_weights_load(monkeypatch, tmp_path, tiny_sd, wds, batch_size):
    text, loaded = run_harness([*common(tiny_sd, wds, tmp_path / "r.json"), "--batch_size", batch_size], monkeypatch)
    assert_one_line(text, rf"--batch_size must be a positive integer \(images per harness batch\), got {batch_size}")
    assert loaded == []


def test_a_list_valued_pipeline_class_is_named(monkeypatch, tmp_path, tiny_sd, wds):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": ["StableDiffusionPipeline"]}))
    text, loaded = run_harness([*common(folder, wds, tmp_path / "r.json")], monkeypatch)
    assert_one_line(text, r"model_index.json's _class_name must be a pipeline class name such as 'StableDiffusionPipeline', got \['StableDiffusionPipeline'\]")
    assert loaded == []


def test_an_empty_split_is_refused_before_weights_load(monkeypatch, tmp_path, tiny_sd):
    from diffcls_plugin.data.wds_writer import write_wds_classification

    root = write_wds_classification(tmp_path / "ds", [], [], CLASSNAMES, TEMPLATES, n_shards=1)
    text, loaded = run_harness(common(tiny_sd, root, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"/test has no labelled images; check --split and --dataset_root")
    assert loaded == []


def test_one_class_is_refused_before_weights_load(monkeypatch, tmp_path, tiny_sd):
    """One class used to run (every image is that class) and write a bare NaN for acc5."""
    root = write_wds_classification(tmp_path / "ds", random_images(3), [0, 0, 0], ["cat"], TEMPLATES, n_shards=1)
    text, loaded = run_harness(common(tiny_sd, root, tmp_path / "r.json"), monkeypatch)
    assert_one_line(text, r"classnames.txt has one class \('cat'\): every image would be it and top-5 accuracy is undefined; .*at least two class names")
    assert loaded == [] and not (tmp_path / "r.json").exists()


def test_fewer_than_five_classes_write_strict_json(monkeypatch, tmp_path, tiny_sd):
    """The harness writes `acc5: NaN` (not JSON) below 5 classes; the result holds null instead,
    and a reference written from it does not check the undefined metric."""
    from click.testing import CliRunner

    from diffcls_plugin.cli import main

    root = write_wds_classification(tmp_path / "ds", random_images(3), [0, 1, 2], ["cat", "dog", "bird"], TEMPLATES, n_shards=1)
    monkeypatch.setenv("DIFFCLS_RESUME", "0")
    text, _ = run_harness([*common(tiny_sd, root, tmp_path / "r.json"), "--batch_size", "3"], monkeypatch, load=True)
    assert text is None
    raw = (tmp_path / "r.json").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    data = json.loads(raw, parse_constant=lambda name: pytest.fail(f"bare {name} in the result"))
    assert data["metrics"]["acc5"] is None and 0 <= data["metrics"]["acc1"] <= 1
    written = CliRunner().invoke(main, ["check", str(tmp_path / "r.json"), "--reference", str(tmp_path / "ref.json"), "--update"])
    assert written.exit_code == 0, written.output
    reference = json.loads((tmp_path / "ref.json").read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in the reference"))
    assert "acc5" not in json.dumps(reference) and "acc1" in json.dumps(reference)
    checked = CliRunner().invoke(main, ["check", str(tmp_path / "r.json"), "--reference", str(tmp_path / "ref.json")])
    assert checked.exit_code == 0, checked.output
