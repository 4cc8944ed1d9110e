"""Without the hub or the network, a run names the real cause once, in seconds: the checkpoint,
the CLIP weights of the prefilter or of a CLIP run, or the dataset download, each with the command
that gets it; no retries, no traceback, no empty folder left behind.

The unreachable network is simulated: ``HF_ENDPOINT`` and every proxy variable point at a port
where nothing answers (the runs never touch the real network), ``HF_HUB_OFFLINE`` is unset, and the
hub cache is an empty folder. The runs are forked from one process started in that environment,
which has imported the harness once (tests/harness_server.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
from harness_server import HarnessServer

from diffcls_plugin.errors import DiffclsError

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there, a connection is refused
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def unreachable_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the hub and every download unreachable, and an empty hub cache."""
    dropped = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "NO_PROXY", "no_proxy", "DIFFCLS_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update({name: UNREACHABLE for name in PROXIES})  # torchvision's dataset downloads go nowhere either
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(tmp_path / "hf"), DIFFCLS_CACHE=str(tmp_path / "cache"), **extra)
    return env


@pytest.fixture(scope="module")
def offline_home(tmp_path_factory):
    """A harness server whose environment is :func:`unreachable_env` of a folder (its hub cache is
    that folder's ``hf/hub``, read when the hub's library is imported): (server, folder)."""
    home = tmp_path_factory.mktemp("unreachable")
    server = HarnessServer(unreachable_env(home))
    server.ready()  # its imports are not part of a run's seconds
    yield server, home
    server.close()


def harness(offline_home, argv: list[str], **extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m clip_benchmark.cli eval ARGV`` (the plugin's hook patches it), forked from the
    unreachable environment's server, ``extra`` added to it: the process and its seconds."""
    server, _ = offline_home
    start = time.perf_counter()
    proc = server.call(["eval", *argv], {**server.env, **extra}, timeout=120)
    return proc, time.perf_counter() - start


def assert_real_cause(proc: subprocess.CompletedProcess, seconds: float, pattern: str) -> str:
    """One ``diffcls: error:`` line matching ``pattern``, no traceback and no hub retries (the hub
    logs each one; they take ~25 s per file), within a bound loose enough for a loaded machine
    (and for the harness's own imports, where a run cannot be forked)."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("diffcls: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr, proc.stderr[-3000:]
    assert seconds < 60, f"{seconds:.1f} s"
    return errors[0]


def test_sd2_on_cifar10_names_the_missing_checkpoint_and_hf_download(tmp_path, offline_home):
    """The README's Stable Diffusion command, without a hub: the checkpoint is the cause, not the dataset."""
    data = tmp_path / "data"
    argv = ["--model", "diffusion-hier", "--pretrained", "sd2-base", "--dataset", "cifar10", "--dataset_root", str(data / "cifar10")]
    proc, seconds = harness(offline_home, argv)
    _, home = offline_home
    line = assert_real_cause(
        proc,
        seconds,
        r"--pretrained 'sd2-base' \(stabilityai/stable-diffusion-2-base\) is not in the local hub cache and the hub "
        r"http://127\.0\.0\.1:9 cannot be reached \(.+\); download it first with network access "
        r"\(hf download stabilityai/stable-diffusion-2-base; the cache is .+\) or pass a local diffusers folder$",
    )
    assert f"the cache is {home / 'hf' / 'hub'})" in line
    assert "huggingface-cli" not in proc.stderr and "cannot be built" not in proc.stderr
    assert not data.exists()  # the dataset was not reached, let alone downloaded


def test_a_clip_run_names_its_missing_open_clip_weights_without_a_traceback(tmp_path, offline_home):
    models = tmp_path / "models"
    argv = ["--model", "RN50", "--pretrained", "openai", "--dataset", "cifar10", "--dataset_root", str(tmp_path / "data" / "cifar10")]
    proc, seconds = harness(offline_home, [*argv, "--model_cache_dir", str(models)])
    line = assert_real_cause(
        proc,
        seconds,
        r"--model RN50 --pretrained openai: the open_clip weights RN50 / openai \(timm/resnet50_clip\.openai on the hub\) are not in "
        r"the local cache and the hub http://127\.0\.0\.1:9 cannot be reached \(.+\); download them once with network access "
        r"\(python -c \"import open_clip; open_clip\.create_model_and_transforms\('RN50', pretrained='openai', cache_dir='.+'\)\"; "
        r"the cache is .+\) or pass --pretrained a local weights file$",
    )
    assert f"cache_dir={str(models)!r}" in line and f"the cache is {models})" in line
    assert not (tmp_path / "data").exists()


def test_the_prefilter_names_its_missing_open_clip_weights(tmp_path, offline_home):
    (tmp_path / "run.yaml").write_text("prefilter: {model: RN50, pretrained: openai, top_k: 3}\n")
    argv = ["--model", "diffusion-hier", "--pretrained", "tiny-digits", "--dataset", "cifar10", "--dataset_root", str(tmp_path / "data" / "cifar10")]
    proc, seconds = harness(offline_home, argv, DIFFCLS_CONFIG=str(tmp_path / "run.yaml"))
    _, home = offline_home
    line = assert_real_cause(
        proc,
        seconds,
        r"prefilter: the open_clip weights RN50 / openai \(timm/resnet50_clip\.openai on the hub\) are not in the local cache and "
        r"the hub http://127\.0\.0\.1:9 cannot be reached .*or give prefilter\.pretrained a local weights file$",
    )
    assert f"the cache is {home / 'hf' / 'hub'})" in line
    assert not (tmp_path / "data").exists()


def test_a_failed_dataset_download_is_named_and_leaves_no_empty_folder(tmp_path, offline_home):
    """A checkpoint that is here (the embedded one) and CIFAR10, which is not and cannot be downloaded."""
    root = tmp_path / "data" / "cifar10"
    argv = ["--model", "diffusion-hier", "--pretrained", "tiny-digits", "--dataset", "cifar10", "--dataset_root", str(root)]
    proc, seconds = harness(offline_home, argv)
    line = assert_real_cause(
        proc,
        seconds,
        r"--dataset cifar10 is not in --dataset_root '.+' and downloading it failed \(.+\); download it once with network access "
        r"\(python -c \"from clip_benchmark\.datasets\.builder import build_dataset; build_dataset\('cifar10', root='.+', split='test', "
        r"download=True\)\"\) or point --dataset_root at a copy$",
    )
    assert f"root={str(root)!r}" in line
    assert not (tmp_path / "data").exists()  # torchvision made data/cifar10/ before its download failed


def test_guard_download_names_network_failures_and_removes_only_the_empty_folders_it_made(tmp_path):
    from diffcls_plugin.harness.downloads import guard_download, network_error

    def failing(error, write=False):
        def build(dataset_name, root, transform=None, split="test", **kwargs):
            os.makedirs(Path(root) / "cifar-10-batches-py")
            if write:
                (Path(root) / "cifar-10-python.tar.gz.part").write_bytes(b"half")
            raise error

        return build

    (tmp_path / "kept").mkdir()
    root = tmp_path / "kept" / "new" / "cifar10"
    with pytest.raises(DiffclsError, match=r"^--dataset cifar10 is not in --dataset_root '.+' and downloading it failed \(<urlopen error refused>\)"):
        guard_download(failing(urllib.error.URLError("refused")))("cifar10", root=str(root), split="test", download=True)
    assert not (tmp_path / "kept" / "new").exists() and (tmp_path / "kept").is_dir()
    # not a download failure: the harness's own error, unchanged, and still no empty folder
    with pytest.raises(ValueError, match="^bad split$"):
        guard_download(failing(ValueError("bad split")))("cifar10", str(root), None, "test")
    assert not (tmp_path / "kept" / "new").exists()
    # a folder that holds something stays
    with pytest.raises(DiffclsError):
        guard_download(failing(ConnectionResetError(104, "reset"), write=True))("cifar10", str(root))
    assert (root / "cifar-10-python.tar.gz.part").is_file() and not (root / "cifar-10-batches-py").exists()
    # the network error is found where the harness wrapped it
    try:
        try:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        except urllib.error.URLError as inner:
            raise RuntimeError("Dataset not found or corrupted") from inner
    except RuntimeError as outer:
        assert network_error(outer) == "<urlopen error [Errno -2] Name or service not known>"
    assert network_error(ValueError("no such split")) is None


def test_offline_checks_name_hf_download_with_the_revision_and_cache_folder(tmp_path):
    """In this process HF_HUB_OFFLINE is set (conftest): the cache folder a run was given is the one searched and named."""
    from diffcls_plugin.harness.preflight import check_checkpoint_offline
    from diffcls_plugin.zoo import Checkpoint

    checkpoint = Checkpoint("org/model", "org/model", "abc123", False)
    cache = tmp_path / "models"
    with pytest.raises(DiffclsError) as exc:
        check_checkpoint_offline(checkpoint, False, str(cache))
    assert str(exc.value) == (
        f"--pretrained 'org/model' (org/model) is not in the local hub cache and HF_HUB_OFFLINE is set; download it first with network "
        f"access (hf download org/model --revision abc123 --cache-dir {cache}; the cache is {cache}) or pass a local diffusers folder"
    )
    snapshot = cache / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    check_checkpoint_offline(checkpoint, False, str(cache))  # cached: passes


def test_diffcls_run_checks_a_clip_cell_for_its_weights(tmp_path, tiny_wds):
    from diffcls_plugin.config import DiffclsConfig
    from diffcls_plugin.harness import validate_cell

    root, _, _ = tiny_wds
    argv = ["clip_benchmark", "eval", "--model", "RN50", "--pretrained", "openai", "--dataset", "wds/tiny", "--dataset_root", str(root)]
    with pytest.raises(DiffclsError, match=r"^--model RN50 --pretrained openai: the open_clip weights RN50 / openai .* HF_HUB_OFFLINE is set; "):
        validate_cell([*argv, "--model_cache_dir", str(tmp_path / "models")], DiffclsConfig())


PROBE = """
import http.server, json, socket, threading
from diffcls_plugin.zoo import hub_unavailable

def serve(status):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.end_headers()
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"

closed = socket.socket()
closed.bind(("127.0.0.1", 0))
port = closed.getsockname()[1]
closed.close()
print(json.dumps({"404": hub_unavailable(serve(404)), "502": hub_unavailable(serve(502)), "closed": hub_unavailable(f"http://127.0.0.1:{port}")}))
"""


def test_the_probe_is_one_quick_request_and_any_answer_but_an_outage_means_reachable(tmp_path):
    env = {k: v for k, v in unreachable_env(tmp_path).items() if k not in PROXIES}  # local servers, reached directly
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert found["404"] is None  # the hub answers (a 404 fails fast in the hub's download too)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+ cannot be reached \(it answers HTTP 502\)", found["502"])  # the hub would retry a 502
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+ cannot be reached \(.*(refused|Errno).*\)", found["closed"]), found["closed"]
    assert seconds < 30 and "Retrying" not in proc.stderr
    from diffcls_plugin.zoo import hub_unavailable

    assert hub_unavailable() == "HF_HUB_OFFLINE is set"  # this process is offline (conftest): no request at all


def test_a_run_that_cannot_start_yet_still_says_what_it_would_cost(tmp_path, monkeypatch, capsys):
    """The SD2/CIFAR10 line on a fresh machine (no checkpoint, no data, no hub): the cost first,
    from the harness's class names and CIFAR10's known test size, then the real cause."""
    import sys

    from diffcls_plugin import register

    register()
    from clip_benchmark import cli as harness_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", "--model", "diffusion-hier", "--dataset", "cifar10", "--dataset_root", str(tmp_path / "data")])
    _, args = harness_cli.get_parser_args()
    with pytest.raises(SystemExit) as exc:
        harness_cli.main_eval(args)
    err = capsys.readouterr().err
    cost = [line for line in err.splitlines() if line.startswith("diffcls: cost:")]
    assert cost == [
        "diffcls: cost: diffusion-hier on cifar10: 10,000 images x 10 classes, 124 UNet evaluations per image (fixed schedule), 1,240,000 in all; "
        "no time estimate (no rate measured on this device yet); this is a full-size checkpoint on a CPU, where a UNet evaluation takes seconds: "
        "a GPU is needed in practice; for a first look, `diffcls eval --subset-per-class 5 ...` evaluates 5 images per class"
    ]
    assert "hf download stabilityai/stable-diffusion-2-base" in str(exc.value.code)
