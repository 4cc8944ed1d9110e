"""Class prompts: the harness's prompts per class, the tokenizer that hands them to the classifier,
and the prompt policy (``first``, ``ensemble``, ``all``) that turns them into UNet conditions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffcls_plugin.errors import DiffclsError

logger = logging.getLogger(__name__)


def class_prompts(classnames: Sequence[str], templates: Sequence[str] | dict[str, Sequence[str]]) -> list[list[str]]:
    """The prompts of each class exactly as the harness builds them.

    ``templates`` is a list of ``"... {c} ..."`` strings, or a dict from class name to its own
    prompts (CuPL), possibly of unequal lengths.
    """
    seen: dict[str, int] = {}
    for c, name in enumerate(classnames):
        if name in seen:
            raise DiffclsError(
                f"classes {seen[name]} and {c} have the same name {name!r}: they would score as one class; make the class names distinct (classnames file)"
            )
        seen[name] = c
    if isinstance(templates, (list, tuple)):
        for template in templates:
            if "{c}" not in str(template):
                raise DiffclsError(
                    f"the template {template!r} has no '{{c}}': every class would get the same prompt from it; put '{{c}}' where the class name goes"
                )
    prompts = []
    for name in classnames:
        if isinstance(templates, dict):
            if name not in templates:
                raise DiffclsError(f"the per-class templates have no prompts for class {name!r}; add them to the template file")
            texts = list(templates[name])
        elif isinstance(templates, (list, tuple)):
            texts = [template.format(c=name) for template in templates]
        else:
            raise DiffclsError(f"templates must be a list or a dict, got {type(templates).__name__}")
        if not texts:
            raise DiffclsError(f"class {name!r} has no prompts; give at least one template")
        prompts.append(texts)
    return prompts


class PromptTokenizer:
    """The harness's ``tokenizer(texts)``: remembers each text and returns ``(n, 1)`` text ids."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: list[str] = []

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = []
        for text in texts:
            if text not in self._ids:
                self._ids[text] = len(self._texts)
                self._texts.append(text)
            ids.append(self._ids[text])
        return torch.tensor(ids, dtype=torch.long).unsqueeze(1)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self._texts[i] for i in ids.reshape(-1).tolist()]


@dataclass(frozen=True)
class ClassConditions:
    """What the UNet is conditioned on for each class.

    Attributes:
        prompts: every class's prompts, in class order.
        embeds: (P, L, D) prompt embeddings.
        rows: class -> the rows of ``embeds`` it is scored with (errors averaged over them).
    """

    prompts: list[list[str]]
    embeds: torch.Tensor
    rows: list[list[int]]


def embed_classes(adapter, prompts: list[list[str]], policy: str) -> ClassConditions:
    """Embed the classes' prompts under a prompt policy.

    Args:
        adapter: encodes prompts (``adapter.encode_prompts(texts) -> (n, L, D)``).
        prompts: every class's prompts (:func:`class_prompts`).
        policy: ``first`` (each class's first prompt, Li et al.), ``ensemble`` (the mean of its
            prompts' embeddings) or ``all`` (every prompt scored, errors averaged per class).
    """
    counts = [len(p) for p in prompts]
    if policy == "first":
        texts = [p[0] for p in prompts]
        rows = [[c] for c in range(len(prompts))]
        if max(counts) > 1:
            logger.warning(
                "diffcls: scoring each class with its first prompt only (%r, ...), as Li et al.; "
                "%d prompts per class are available: set 'prompts: ensemble' or 'prompts: all' to use them",
                texts[0],
                max(counts),
            )
        embeds = adapter.encode_prompts(texts)
    elif policy == "ensemble":
        flat = [t for p in prompts for t in p]
        chunks = torch.split(adapter.encode_prompts(flat), counts)
        embeds = torch.stack([chunk.mean(dim=0) for chunk in chunks])  # (C, L, D)
        rows = [[c] for c in range(len(prompts))]
    else:  # "all": every prompt scored, errors averaged per class
        flat = [t for p in prompts for t in p]
        embeds = adapter.encode_prompts(flat)
        starts = [sum(counts[:c]) for c in range(len(counts))]
        rows = [list(range(s, s + n)) for s, n in zip(starts, counts)]
        if max(counts) > 1:
            logger.warning(
                "diffcls: 'prompts: all' scores every prompt: %.1f UNet evaluations per sampler evaluation",
                sum(counts) / len(counts),
            )
    check_distinct(prompts, embeds, rows)
    return ClassConditions(prompts, embeds, rows)


def check_distinct(prompts: list[list[str]], embeds: torch.Tensor, rows: list[list[int]]) -> None:
    """Two classes conditioned on the same embeddings (prompts equal after the tokenizer's length
    limit) score as one class: refuse them by name before any UNet evaluation."""
    seen: dict[bytes, int] = {}
    for c, class_rows in enumerate(rows):
        key = b"".join(embeds[r].detach().cpu().float().contiguous().numpy().tobytes() for r in class_rows)  # float: exact for fp16 and bf16
        if key in seen:
            other = seen[key]
            raise DiffclsError(
                f"classes {other} ({prompts[other][0]!r}) and {c} ({prompts[c][0]!r}) get the same text condition "
                "(their prompts are equal once the text encoder's token limit cuts them): they would score as one class; "
                "shorten the templates or the class names so that the names come first"
            )
        seen[key] = c
