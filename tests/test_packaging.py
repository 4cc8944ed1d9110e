"""The wheel: its .pth hook lands at the site-packages root and patches the harness on import."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_hook_and_the_zoo(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("diffcls_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "diffcls_plugin.pth" in names  # at the wheel root, so it lands in site-packages
    assert "diffcls_plugin/zoo/checkpoints.json" in names
    assert "diffcls_plugin/configs/demo.yaml" in names
    assert "diffcls_plugin/weights/tiny-digits/unet/diffusion_pytorch_model.safetensors" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert (target / "diffcls_plugin.pth").is_file()
    # a clean interpreter (-S: no site-packages processing) that sees the installed dependencies
    # without this checkout's editable hook, then processes the wheel's site dir like site-packages
    deps = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys, site; sys.path.append({deps!r}); site.addsitedir({str(target)!r});"
        "assert 'torch' not in sys.modules;"
        "import diffcls_plugin, clip_benchmark.models as m;"
        f"assert diffcls_plugin.__file__.startswith({str(target)!r}), diffcls_plugin.__file__;"
        "from diffcls_plugin.zoo import resolve_checkpoint;"
        f"assert resolve_checkpoint('tiny-digits').source.startswith({str(target)!r});"
        "print('diffusion' in m.MODEL_TYPES)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.strip() == "True", out.stderr[-3000:]
