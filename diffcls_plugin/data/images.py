"""Decoding images the way the classifier needs them: any bit depth to 8-bit RGB."""

from __future__ import annotations

import io


def to_rgb(image):
    """PIL image -> 8-bit RGB. High-bit-depth greyscale (16-bit PNG: modes ``I;16*`` and ``I``)
    and float images are rescaled to 0..255 first; PIL's own conversion would clip them."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 0..65535 -> 0..255
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0  # 0..1 floats
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    return image.convert("RGB")


def decode_image(data: bytes):
    """Encoded image bytes (PNG, JPEG, WebP ...) -> 8-bit RGB PIL image; raises on a corrupt file."""
    from PIL import Image

    with io.BytesIO(data) as stream:
        image = Image.open(stream)
        image.load()
    return to_rgb(image)
