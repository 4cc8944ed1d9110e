"""A real CLIP BPE tokenizer built offline from the merges file that open_clip ships.

Used to build small Stable-Diffusion-format models (tests, the embedded demo model) without the
model hub: the vocabulary is rebuilt exactly as CLIP builds it (256 byte symbols, their
end-of-word forms, one token per merge, then the two special tokens), truncated to the first
``n_merges`` merges to keep the text embedding small.
"""

from __future__ import annotations

import gzip
import json
import os
from importlib import resources
from pathlib import Path

CLIP_N_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_merges(n_merges: int = CLIP_N_MERGES) -> list[str]:
    """The first ``n_merges`` BPE merges of CLIP, read from open_clip's packaged file."""
    if not 0 <= n_merges <= CLIP_N_MERGES:
        raise ValueError(f"n_merges must be between 0 and {CLIP_N_MERGES}, got {n_merges}")
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return lines[1 : 1 + n_merges]  # line 0 is the version header


def clip_vocab(merges: list[str]) -> dict[str, int]:
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def save_clip_tokenizer(folder: str | os.PathLike, n_merges: int = 4096, model_max_length: int = 77):
    """Write a CLIP tokenizer (vocab.json, merges.txt and the transformers files) to ``folder``.

    Returns:
        the loaded ``transformers.CLIPTokenizer``; its vocabulary size is ``514 + n_merges``.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_merges(n_merges)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "model_max_length": model_max_length,
                "do_lower_case": True,
            },
            indent=2,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer
