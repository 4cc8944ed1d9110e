"""One progress display per run: a tqdm bar on a terminal, plain log lines elsewhere; the harness's
own bars off for diffusion runs; its loaders' warnings silenced or shown once."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, random_images

from diffcls_plugin import distributed, register
from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.classifier.progress import INTERVAL_ENV, ProgressBar, eta_seconds, log_interval
from diffcls_plugin.classifier.stats import RunStats
from diffcls_plugin.config import load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.harness.quiet import ONCE_WARNINGS, ShowOnce, filter_warnings

register()
from clip_benchmark.metrics import zeroshot_classification as zsc  # noqa: E402

# the harness's and the loaders' tqdm bars: "0it [00:00, ?it/s]", "1it [03:12, 192.11s/it]", "36/36 [00:00<00:00, 18710.65it/s]"
TQDM_BAR = re.compile(r"\d+it \[|it/s\]|s/it\]|\?it/s")
LINE = re.compile(r"^diffusion-\w+: (\d+)/(\d+) images in \d+:\d\d:\d\d, [\d.]+ UNet evals/s, [\d.]+ evals/img(, ETA \d+:\d\d:\d\d)?$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def counters(n_images: int, n_computed: int, evals_per_image: int = 64, seconds_computed: float = 1.0) -> RunStats:
    return RunStats(
        n_images=n_images,
        n_unet_evals=n_images * evals_per_image,
        n_images_computed=n_computed,
        n_unet_evals_computed=n_computed * evals_per_image,
        seconds_computed=seconds_computed,
    )


def test_off_a_terminal_one_line_after_the_first_batch_then_at_most_one_per_interval():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("diffusion-hier", 10000, stream=out, interval_s=60, clock=clock)
    clock.now += 39
    bar.update(128, counters(128, 116, seconds_computed=116 * 64 / 210.3), with_store=True)
    assert out.getvalue() == "diffusion-hier: 128/10000 images in 0:00:39, 210.3 UNet evals/s, 64.0 evals/img, 12 from store, ETA 0:55:19\n"
    for step in (20, 20, 19):  # 59 s after the first line: still one line
        clock.now += step
        bar.update(128, counters(bar.n_done, bar.n_done - 12), with_store=True)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 1  # 60 s: the next batch is logged
    bar.update(128, counters(640, 628), with_store=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("diffusion-hier: 640/10000 images in 0:01:39, ")
    clock.now += 5
    bar.update(128, counters(768, 756), with_store=True)
    bar.close()  # the latest state, unlogged so far, is the last line
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].startswith("diffusion-hier: 768/10000 images in 0:01:44, ")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_the_last_batch_is_logged_at_once_without_an_eta_and_only_once():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("diffusion-race", 12, stream=out, interval_s=60, clock=clock)
    for n in (4, 8, 12):
        clock.now += 2
        bar.update(4, counters(n, n, seconds_computed=n / 4), with_store=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "diffusion-race: 4/12 images in 0:00:02, 256.0 UNet evals/s, 64.0 evals/img, ETA 0:00:04",
        "diffusion-race: 12/12 images in 0:00:06, 256.0 UNet evals/s, 64.0 evals/img",
    ]
    assert all(LINE.match(line) for line in lines)


def test_interval_zero_logs_every_batch_and_comes_from_the_environment(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv(INTERVAL_ENV, "0")
    bar = ProgressBar("diffusion-hier", None, stream=out, clock=FakeClock())
    for n in (3, 6, 9):
        bar.update(3, counters(n, n), with_store=False)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [f"diffusion-hier: {n} images in 0:00:00" for n in (3, 6, 9)]
    assert "ETA" not in out.getvalue()  # no total, no ETA
    assert log_interval({}) == 60.0 and log_interval({INTERVAL_ENV: "300"}) == 300.0
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(DiffclsError, match=INTERVAL_ENV):
            log_interval({INTERVAL_ENV: bad})


def test_eta_assumes_the_remaining_images_are_computed():
    # 100 stored images then 10 computed in 20 s: 890 left at 2 s each, not at 20/110 s each
    assert eta_seconds(110, 1000, counters(110, 10), 20.0) == pytest.approx(890 * 2.0)
    assert eta_seconds(100, 1000, counters(100, 0), 5.0) == pytest.approx(900 * 0.05)  # all from the store so far
    assert eta_seconds(100, None, counters(100, 100), 5.0) is None


def test_on_a_terminal_one_tqdm_bar_with_the_same_fields_and_no_cursor_moves():
    clock, out = FakeClock(), Terminal()
    bar = ProgressBar("diffusion-hier", 12, stream=out, clock=clock)
    assert bar.is_bar and "diffusion-hier:   0%|" in out.getvalue() and "0/12 images" in out.getvalue()  # drawn at the start
    clock.now += 10
    bar.update(4, counters(4, 3, seconds_computed=2.0), with_store=True)
    # the ETA first on the bar: a narrow terminal cuts the line's end
    assert "4/12 images [" in out.getvalue() and ", ETA 0:00:27, 96.0 UNet evals/s, 64.0 evals/img, 1 from store]" in out.getvalue()
    bar.update(8, counters(12, 11, seconds_computed=6.0), with_store=True)  # the last image closes the bar
    bar.close()
    text = out.getvalue()
    assert "12/12 images" in text and "\r" in text and "\x1b" not in text and "\n" not in text.rstrip("\n")


def test_other_ranks_show_nothing(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    out = io.StringIO()
    bar = ProgressBar("diffusion-hier", 12, stream=out, interval_s=0)
    bar.update(12, counters(12, 12), with_store=False)
    bar.close()
    assert out.getvalue() == ""


def test_each_repeated_loader_warning_shows_once_per_process_and_others_pass_through():
    shown = []
    show = ShowOnce(lambda message, *rest: shown.append(str(message)), ONCE_WARNINGS)
    workers = "This DataLoader will create 4 worker processes in total. Our suggested max number of worker in current system is 2"
    for text in (workers, "Precision is ill-defined and being set to 0.0", workers, "Recall is ill-defined", "something else", "something else"):
        show(UserWarning(text), UserWarning, "x.py", 1)
    assert shown == [workers, "Precision is ill-defined and being set to 0.0", "something else", "something else"]
    filter_warnings()
    filter_warnings()
    assert isinstance(warnings.showwarning, ShowOnce) and not isinstance(warnings.showwarning.show, ShowOnce)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # no filters: every warning is recorded ...
        filter_warnings()  # ... but the harness's shardshuffle one
        warnings.warn("WebDataset(shardshuffle=...) is None; set explicitly to False or a number", UserWarning, stacklevel=1)
        warnings.warn("a warning that says something", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning that says something"]


@pytest.mark.parametrize("terminal", [False, True])
def test_the_harness_draws_no_bar_of_its_own_for_a_diffusion_run(monkeypatch, tiny_sd, terminal):
    """The harness's bars over the classes and the batches nested with the classifier's
    (``1it [03:12, 192.11s/it]`` beside it): inside its evaluate, only the classifier's shows."""
    err = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv(INTERVAL_ENV, "0")
    model = load_classifier("diffusion-baseline", str(tiny_sd), config=load_config(None, ["baseline.n_timesteps=2"]))
    x = torch.stack([model.transform(img) for img in random_images(6)])
    dataset = torch.utils.data.TensorDataset(x, torch.tensor([i % len(CLASSNAMES) for i in range(6)]))
    dataset.classes = CLASSNAMES
    original_tqdm = zsc.tqdm
    metrics = zsc.evaluate(model, torch.utils.data.DataLoader(dataset, batch_size=3), model.tokenizer, CLASSNAMES, TEMPLATES, "cpu")
    assert "acc1" in metrics and zsc.tqdm is original_tqdm  # the harness's tqdm is back for other models
    text = err.getvalue()
    assert not TQDM_BAR.search(text), text
    if terminal:
        assert "6/6 images" in text and text.count("\r") >= 3 and "\x1b" not in text
    else:
        assert [LINE.match(line).group(1, 2) for line in text.splitlines()] == [("3", "6"), ("6", "6")]


def test_a_clip_benchmark_run_off_a_terminal_logs_plain_lines_and_warns_at_most_once(tmp_path, tiny_sd, tiny_wds):
    """Two diffusion runs in one `clip_benchmark eval` (one process), stderr a pipe, the harness's
    default 4 loader workers (more than this machine's CPUs on a small runner)."""
    root, images, _ = tiny_wds
    config = tmp_path / "diffcls.yaml"
    config.write_text("baseline:\n  n_timesteps: 2\nhierarchical:\n  n_timesteps: 4\n")
    argv = ["eval", "--model", "diffusion-baseline", "diffusion-hier", "--pretrained", str(tiny_sd), "--dataset", "wds/tiny", "--dataset_root", str(root)]
    argv += ["--batch_size", "4", "--output", str(tmp_path / "{model}.json")]
    env = {**os.environ, "DIFFCLS_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    assert "\x1b" not in err and "\r" not in err and not TQDM_BAR.search(err), err
    assert "Loading weights" not in err and "shardshuffle" not in err
    assert err.count("This DataLoader will create") <= 1 and err.count("is ill-defined") <= 1
    for model in ("diffusion-baseline", "diffusion-hier"):
        lines = [line for line in err.splitlines() if line.startswith(f"{model}: ")]
        assert lines and all(LINE.match(line) for line in lines), lines
        assert len(lines) >= 2 and "ETA" in lines[0]  # the first batch's line already has an ETA
        assert lines[-1].startswith(f"{model}: {len(images)}/{len(images)} images") and "ETA" not in lines[-1]
