"""The declarative checkpoint zoo (open_clip's ``pretrained.py`` pattern): names are data.

``--pretrained`` accepts a zoo name (``checkpoints.json``), a local folder in diffusers layout,
or a Hugging Face hub id (``org/name``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError, did_you_mean, short

DEFAULT_CHECKPOINT = "sd2-base"
# diffusers pipeline class (model_index.json's "_class_name") -> family; one adapter module per family
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
}
SUPPORTED = "Stable Diffusion 1.x/2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline) and SD3/SD3.5 (StableDiffusion3Pipeline)"
# the components a folder of each family must hold, and those that carry weights
FAMILY_COMPONENTS = {
    "sd": (("unet", "vae", "text_encoder", "tokenizer", "scheduler"), ("unet", "vae", "text_encoder")),
    "sdxl": (("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"), ("unet", "vae", "text_encoder", "text_encoder_2")),
    "sd3": (
        ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
        ("transformer", "vae", "text_encoder", "text_encoder_2"),
    ),
}


COMPONENTS, WEIGHTED_COMPONENTS = FAMILY_COMPONENTS["sd"]
FAMILY_NAMES = {"sd": "Stable Diffusion", "sdxl": "SDXL", "sd3": "SD3"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read now, as huggingface_hub reads it: 1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


PROBE_TIMEOUT = 3.0  # seconds a hub probe waits, unless HF_HUB_ETAG_TIMEOUT says otherwise


def hub_cache(cache_dir: str | None = None) -> str:
    """Where hub downloads go: ``cache_dir``, else the hub's cache (``HF_HUB_CACHE``, default ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def hub_unavailable(url: str | None = None) -> str | None:
    """Why nothing can be downloaded from the hub (or ``url``) now, for an error message; ``None``
    when it can. Offline (``HF_HUB_OFFLINE``) says so at once; otherwise one HEAD request, without
    retries and with a short timeout (``HF_HUB_ETAG_TIMEOUT`` seconds when set, else 3), probes the
    hub's endpoint (``HF_ENDPOINT``): any HTTP answer means it is reachable. The hub's own downloads
    retry an unreachable endpoint for about 25 s per file before failing."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    where = url or f"the hub {constants.ENDPOINT}"
    try:
        timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT)
    except ValueError:
        timeout = PROBE_TIMEOUT
    try:
        status = get_session().head(url or constants.ENDPOINT, timeout=timeout).status_code
    except Exception as err:  # noqa: BLE001 - DNS, refused, timed out, TLS, proxy: all mean "cannot be reached"
        lines = str(err).strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        slow = f"; no answer in {timeout:g} s: on a slow network raise HF_HUB_ETAG_TIMEOUT" if "Timeout" in type(err).__name__ else ""
        return f"{where} cannot be reached ({reason}{slow})"
    if status == 408 or status >= 500:  # a proxy's 502 or 504, an outage: the statuses the hub's downloads retry
        return f"{where} cannot be reached (it answers HTTP {status})"
    return None


def hf_download_command(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that puts ``repo_id`` where a run reads it."""
    words = ["hf download", repo_id]
    if revision and revision != "main":
        words += ["--revision", revision]
    if cache_dir:
        words += ["--cache-dir", str(cache_dir)]
    return " ".join(words)


def folder_family(path: Path) -> str:
    """A local folder's family from its ``model_index.json`` (``sd`` when it has none or an
    unknown class: the adapter loader names unsupported classes)."""
    try:
        name = json.loads((Path(path) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return "sd"
    return PIPELINE_FAMILIES.get(name, "sd") if isinstance(name, str) else "sd"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Checkpoint:
    """Where a checkpoint's weights come from.

    Attributes:
        name: what the user passed to ``--pretrained``.
        source: a hub id or a local folder.
        revision: hub revision (``None`` for a folder).
        is_local: True for a folder on disk.
        prediction_type: what the zoo expects (``None`` when unknown; the scheduler config of
            the checkpoint is what the run uses).
    """

    name: str
    source: str
    revision: str | None
    is_local: bool
    prediction_type: str | None = None
    family: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": None if self.is_local else self.source,
            "revision": self.revision,
            "folder": self.source if self.is_local else None,
        }


@cache
def zoo() -> dict[str, dict[str, Any]]:
    """Every known checkpoint name and its entry, from the packaged ``checkpoints.json``."""
    with resources.files(__package__).joinpath("checkpoints.json").open() as f:
        return json.load(f)


def resolve_checkpoint(pretrained: str) -> Checkpoint:
    """Turn a ``--pretrained`` value into a :class:`Checkpoint`, checking a local folder's layout.

    Raises:
        DiffclsError: unknown zoo name (with the closest name), or a folder that is not a
            diffusers Stable Diffusion folder.
    """
    entries = zoo()
    if pretrained in entries:
        entry = entries[pretrained]
        if "package_path" in entry:
            folder = resources.files("diffcls_plugin").joinpath(entry["package_path"])
            return Checkpoint(pretrained, str(folder), None, True, entry.get("prediction_type"))
        return Checkpoint(pretrained, entry["repo_id"], entry.get("revision"), False, entry.get("prediction_type"), entry.get("family"))
    path = Path(os.path.expanduser(pretrained))
    if path.exists():
        check_diffusers_folder(path)
        return Checkpoint(pretrained, str(path.resolve()), None, True)
    looks_like_path = pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1 or "\\" in pretrained
    if not looks_like_path and pretrained.count("/") == 1:
        return Checkpoint(pretrained, pretrained, "main", False)  # a hub id, org/name
    if looks_like_path:
        raise DiffclsError(
            f"--pretrained folder {pretrained!r} does not exist; pass a folder in diffusers layout, a zoo name ({', '.join(entries)}) or a hub id"
        )
    did = did_you_mean(pretrained, entries)
    raise DiffclsError(
        f"unknown --pretrained {pretrained!r}.{did} Use a zoo name ({', '.join(entries)}), "
        "a hub id such as stabilityai/stable-diffusion-2-base, or a local folder in diffusers layout"
    )


def check_hub_checkpoint(checkpoint: Checkpoint, cache_dir: str | None = None) -> None:
    """Before any weights load: a hub checkpoint that is not in the hub cache (``cache_dir``, else
    the hub's) needs the hub; offline, or with the hub unreachable (:func:`hub_unavailable`: one
    quick probe instead of minutes of retries), raise a :class:`DiffclsError` naming the checkpoint,
    the ``hf download`` command and the cache. A local folder passes."""
    if checkpoint.is_local:
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(checkpoint.source, "model_index.json", cache_dir=cache_dir, revision=checkpoint.revision), str):
        return  # cached (a partial download is named by the loader)
    why = hub_unavailable()
    if why is not None:
        raise DiffclsError(
            f"--pretrained {checkpoint.name!r} ({checkpoint.source}) is not in the local hub cache and {why}; download it first "
            f"with network access ({hf_download_command(checkpoint.source, checkpoint.revision, cache_dir)}; "
            f"the cache is {hub_cache(cache_dir)}) or pass a local diffusers folder"
        )


def check_diffusers_folder(path: Path) -> None:
    """Raise a clear error unless ``path`` holds a Stable Diffusion model in diffusers layout."""
    if not path.is_dir():
        raise DiffclsError(f"--pretrained {str(path)!r} is a file; pass the folder that holds model_index.json, unet/, vae/, ...")
    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None
    if name is not None and not isinstance(name, str):
        raise DiffclsError(
            f"--pretrained {str(path)!r}: model_index.json's _class_name must be a pipeline class name such as "
            f"'StableDiffusionPipeline', got {short(name)}; fix the file"
        )
    if name is not None and name.endswith("Pipeline") and name not in PIPELINE_FAMILIES:
        raise DiffclsError(f"--pretrained {str(path)!r} is a {name} checkpoint; diffusion classifiers support {SUPPORTED}")
    family = folder_family(path)
    missing = [c for c in FAMILY_COMPONENTS[family][0] if not (path / c).is_dir()]
    if missing:
        raise DiffclsError(
            f"--pretrained folder {str(path)!r} is not a diffusers {FAMILY_NAMES[family]} folder: missing "
            f"{', '.join(m + '/' for m in missing)}. Save a pipeline with "
            "StableDiffusionPipeline.save_pretrained(folder), or convert a single-file checkpoint with "
            "StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)"
        )


def check_safetensors(path: Path, allow_pickle: bool) -> None:
    """Raise unless every weighted component of a local folder has safetensors weights.

    A component with only pickle weights is refused unless ``allow_pickle`` (the config key
    ``allow_pickle: true``) says otherwise: unpickling runs arbitrary code.
    """
    for component in FAMILY_COMPONENTS[folder_family(path)][1]:
        folder = path / component
        files = [f.name for f in folder.iterdir() if f.is_file()]
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if not pickles:
            raise DiffclsError(f"--pretrained folder {str(folder)!r} has no weights (no .safetensors file)")
        if not allow_pickle:
            raise DiffclsError(
                f"--pretrained folder {str(folder)!r} has only pickle weights ({', '.join(sorted(pickles))}); "
                "convert them to safetensors, or allow them with 'allow_pickle: true' in the config "
                "(DIFFCLS_CONFIG file, or diffcls eval --set allow_pickle=true) if you trust the source"
            )


def scheduler_length(checkpoint: Checkpoint) -> int | None:
    """``num_train_timesteps`` of a local folder's scheduler config (``None`` when it cannot be read)."""
    if not checkpoint.is_local:
        return None
    try:
        return int(json.loads((Path(checkpoint.source) / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
