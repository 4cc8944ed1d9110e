"""Class prompts that would silently score several classes as one are refused by name."""

from __future__ import annotations

import pytest
import torch

from diffcls_plugin.classifier.prompts import check_distinct, class_prompts
from diffcls_plugin.errors import DiffclsError


def test_a_template_without_the_class_placeholder_is_refused():
    with pytest.raises(DiffclsError, match=r"the template 'a photo\.' has no '\{c\}'"):
        class_prompts(["cat", "dog"], ["a photo of a {c}.", "a photo."])


def test_duplicate_class_names_are_refused():
    with pytest.raises(DiffclsError, match=r"classes 0 and 2 have the same name 'cat'"):
        class_prompts(["cat", "dog", "cat"], ["a photo of a {c}."])


def test_classes_with_the_same_text_condition_are_refused():
    embeds = torch.randn(3, 4, 8)
    embeds[2] = embeds[0]  # as two prompts equal after the tokenizer's limit encode
    prompts = [["a photo of a very long name one"], ["b"], ["a photo of a very long name two"]]
    with pytest.raises(DiffclsError, match=r"classes 0 .* and 2 .* get the same text condition"):
        check_distinct(prompts, embeds, [[0], [1], [2]])
    check_distinct(prompts, torch.randn(3, 4, 8), [[0], [1], [2]])  # distinct: no error
