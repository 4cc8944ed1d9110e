"""diffcls_plugin: diffusion models as zero-shot classifiers inside CLIP_benchmark.

Importing this package is cheap (no torch); the heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.2.0"


def register() -> None:
    """Patch an installed CLIP_benchmark so it runs ``diffusion-*`` models (idempotent).

    The ``.pth`` hook does this automatically when ``clip_benchmark`` is imported; call it
    yourself when the hook is off (``DIFFCLS_NO_HOOK=1``) or the package is not installed.
    """
    from diffcls_plugin.harness import register as _register

    _register()


def load_classifier(*args, **kwargs):
    """See :func:`diffcls_plugin.classifier.load_classifier`."""
    from diffcls_plugin.classifier import load_classifier as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load_classifier", "register"]
