"""The diffusion classifier: a CLIP-shaped facade (:mod:`.model`) over a per-batch engine
(:mod:`.engine`), with its prompts, counters, run identity and loading."""

from __future__ import annotations

from diffcls_plugin.classifier.loading import load_classifier
from diffcls_plugin.classifier.model import DiffusionClassifier
from diffcls_plugin.classifier.provenance import package_versions

__all__ = ["DiffusionClassifier", "load_classifier", "package_versions"]
