"""Property tests of the stratified, grouped split (bench/data/splits.py) on generated data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusebench.core.errors import ConfigError
from fusebench.data.splits import SplitFractions, class_counts, missing_classes, stratified_group_split


@st.composite
def grouped_labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """Classes, each made of several groups of 1–4 rows (one class per group, like ESC-50 src_file)."""
    n_classes = draw(st.integers(2, 12))
    labels, groups = [], []
    gid = 0
    for cls in range(n_classes):
        for size in draw(st.lists(st.integers(1, 4), min_size=1, max_size=10)):
            labels += [cls] * size
            groups += [f"g{gid}"] * size
            gid += 1
    seed = draw(st.integers(0, 2**16))
    perm = np.random.default_rng(seed).permutation(len(labels))  # rows of a group need not be adjacent
    return np.asarray(labels)[perm], np.asarray(groups)[perm], seed


FRACTIONS = SplitFractions.nested(test=0.2, val=0.15)


@settings(max_examples=150, deadline=None)
@given(grouped_labels())
def test_partition_no_group_crosses_and_coverage(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    labels, groups, seed = data
    parts = stratified_group_split(labels, groups, FRACTIONS, seed)
    every = np.sort(np.concatenate(list(parts.values())))
    assert np.array_equal(every, np.arange(len(labels))), "every row in exactly one split"
    owner = {}
    for split, idx in parts.items():
        for g in set(groups[idx]):
            assert owner.setdefault(g, split) == split, f"group {g} in {owner[g]} and {split}"
    for cls in np.unique(labels):
        n_groups = len(set(groups[labels == cls]))
        wanted = ("train", "test", "val")[: min(n_groups, 3)] if n_groups >= 2 else ()
        for split in wanted:  # a third group reaches validation as well
            assert np.any(labels[parts[split]] == cls), f"class {cls} ({n_groups} groups) missing from {split}"


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 20), st.integers(0, 2**16))
def test_class_proportions_close_with_many_small_groups(n_classes: int, seed: int) -> None:
    """Singleton groups, 40 rows per class: each class's share per split within ±1.5 rows of its target."""
    labels = np.repeat(np.arange(n_classes), 40)
    parts = stratified_group_split(labels, None, FRACTIONS, seed)
    for split, share in FRACTIONS.shares:
        got = np.bincount(labels[parts[split]], minlength=n_classes)
        assert np.all(np.abs(got - share * 40) <= 1.5), (split, got, share * 40)


def test_deterministic_and_seed_dependent() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 300)
    groups = rng.integers(0, 120, 300)
    a = stratified_group_split(labels, groups, FRACTIONS, seed=3)
    b = stratified_group_split(labels, groups, FRACTIONS, seed=3)
    c = stratified_group_split(labels, groups, FRACTIONS, seed=4)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert any(not np.array_equal(a[s], c[s]) for s in a)


def test_esc50_like_beats_group_shuffle() -> None:
    """50 classes × 8 clips in 1–8 recordings: every class with ≥ 2 recordings reaches train and
    test, and every class is in train — what GroupShuffleSplit failed on the real fold."""
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for cls in range(50):
        cuts = np.sort(rng.choice(np.arange(1, 8), size=rng.integers(0, 7), replace=False))
        for k, part in enumerate(np.split(np.arange(8), cuts)):
            labels += [cls] * len(part)
            groups += [f"{cls}-{k}"] * len(part)
    labels_a, groups_a = np.asarray(labels), np.asarray(groups)
    parts = stratified_group_split(labels_a, groups_a, FRACTIONS, seed=0)
    counts = class_counts({s: labels_a[i] for s, i in parts.items()})
    assert "train" not in missing_classes(counts)
    sizes = {s: len(i) for s, i in parts.items()}
    assert abs(sizes["test"] - 80) <= 12 and abs(sizes["val"] - 48) <= 12, sizes


def test_bad_fractions_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="sum to"):
        SplitFractions.of(train=0.5, test=0.2)
    with pytest.raises(ConfigError, match="must lie in"):
        SplitFractions.of(train=1.2, test=-0.2)


def test_missing_classes_reports_absent_split() -> None:
    counts = class_counts({"train": [0, 0, 1], "val": [2], "test": [0, 1]})
    assert missing_classes(counts) == {"train": ["2"], "test": ["2"]}
