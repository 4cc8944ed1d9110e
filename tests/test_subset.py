"""Stratified subsets: deterministic, per class or by total, and the same through the harness."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from diffcls_plugin.data.subset import SubsetSpec, fingerprint, select
from diffcls_plugin.errors import DiffclsError

LABELS = [i % 7 for i in range(70)] + [0] * 30 + [6] * 3  # unbalanced: class 0 big, class 6 has 13


def test_per_class_is_stratified_sorted_and_deterministic():
    idx = select(LABELS, SubsetSpec(per_class=5, seed=1))
    counts = Counter(LABELS[i] for i in idx)
    assert counts == {c: 5 for c in range(7)}
    assert list(idx) == sorted(idx) and len(set(idx)) == len(idx)
    assert np.array_equal(idx, select(LABELS, SubsetSpec(per_class=5, seed=1)))
    assert not np.array_equal(idx, select(LABELS, SubsetSpec(per_class=5, seed=2)))
    assert fingerprint(idx) == fingerprint(select(list(LABELS), SubsetSpec(per_class=5, seed=1)))


def test_per_class_takes_all_of_a_small_class():
    idx = select([0, 0, 0, 1], SubsetSpec(per_class=2))
    assert Counter([0, 0, 0, 1][i] for i in idx) == {0: 2, 1: 1}


def test_total_is_proportional_with_largest_remainders():
    idx = select(LABELS, SubsetSpec(total=20))
    counts = Counter(LABELS[i] for i in idx)
    assert sum(counts.values()) == 20
    sizes = Counter(LABELS)
    for c, n in counts.items():
        assert abs(n - 20 * sizes[c] / len(LABELS)) < 1  # within one of its exact share
    assert counts[0] == max(counts.values())


def test_a_class_choice_does_not_depend_on_other_classes():
    a = select([0, 1, 0, 1, 0, 1, 0, 1], SubsetSpec(per_class=2, seed=3))
    b = select([0, 1, 0, 1, 0, 1, 0, 1, 2, 2], SubsetSpec(per_class=2, seed=3))
    assert [i for i in a] == [i for i in b if i < 8]


@pytest.mark.parametrize("spec", [SubsetSpec(), SubsetSpec(per_class=2, total=3), SubsetSpec(per_class=0), SubsetSpec(total="5")])
def test_bad_specs(spec):
    with pytest.raises(DiffclsError):
        select(LABELS, spec)
