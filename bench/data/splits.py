"""Stratified, grouped splits by fraction (train/val/test), seeded.

Why: a split that is grouped but not stratified can leave a class out of train or test entirely
(ESC-50 fold 4 has 8 clips per class: a plain `GroupShuffleSplit` anti-correlated train and test
class counts, the train-majority class had no test clip and one class never reached train). Here
whole groups (clips of one recording, rows of one review…) are assigned to splits so that

- no group crosses splits (leakage), and
- every class is split in about the requested proportions, and
- every class with at least 2 groups has at least one group in train and one in test, and every
  class with at least 3 groups one in validation too (a class whose rows all share one group can
  only be in one split: the greedy pass puts it in train; `sparse_classes` finds such classes so a
  dataset can drop them, `data.min_groups_per_class`).

The assignment is a greedy pass in the spirit of scikit-learn's `StratifiedGroupKFold` (groups
with the most rows first, each to the split where it least increases the chi-square distance
between the split's class counts and their targets), generalised to unequal fractions, followed
by a repair pass that moves a group into train, test (and validation) for a class that has enough
groups but none there. Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fusebench.core.errors import ConfigError

MIN_GROUPS_FOR_COVERAGE = 2  # a class with this many groups must reach train and test


@dataclass(frozen=True)
class SplitFractions:
    """Share of rows per split; the shares must be positive and sum to 1."""

    shares: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, **shares: float) -> SplitFractions:
        out = cls(tuple(shares.items()))
        out.check()
        return out

    @classmethod
    def nested(cls, test: float, val: float) -> SplitFractions:
        """`test` of all rows, then `val` of the rest (the dataset YAML's `test_fraction`/`val_fraction`)."""
        return cls.of(train=(1 - test) * (1 - val), val=(1 - test) * val, test=test)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.shares)

    @property
    def values(self) -> np.ndarray:
        return np.array([v for _, v in self.shares], dtype=float)

    def check(self) -> None:
        if not self.shares:
            raise ConfigError("split fractions: no split named")
        for name, v in self.shares:
            if not 0 < v < 1 and not (v == 1 and len(self.shares) == 1):
                raise ConfigError(f"split fractions: {name}={v!r} must lie in (0, 1)")
        total = float(self.values.sum())
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"split fractions {dict(self.shares)} sum to {total:.4f}; they must sum to 1")


def stratified_group_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[object] | np.ndarray | None,
    fractions: SplitFractions,
    seed: int,
) -> dict[str, np.ndarray]:
    """Row indices per split (sorted), grouped by `groups` and stratified by `labels`.

    Args:
        labels: class of every row (any hashable values).
        groups: group id of every row; rows with equal ids stay in one split. None: every row is its
            own group (plain stratified split).
        fractions: share of rows per split (e.g. `SplitFractions.nested(test=0.2, val=0.15)`).
        seed: fixes the order in which equal-sized groups are placed and breaks ties.
    """
    fractions.check()
    y = np.asarray(labels)
    n = len(y)
    if n == 0:
        return {name: np.zeros(0, dtype=np.int64) for name in fractions.names}
    g = np.arange(n) if groups is None else np.asarray(groups, dtype=object)
    if len(g) != n:
        raise ValueError(f"labels has {n} rows but groups has {len(g)}")
    _, y_idx = np.unique(y, return_inverse=True)
    _, g_idx = np.unique(g.astype(str), return_inverse=True)
    n_groups, n_classes = int(g_idx.max()) + 1, int(y_idx.max()) + 1
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)  # rows of each class in each group
    np.add.at(counts, (g_idx, y_idx), 1)

    frac = fractions.values
    target = frac[:, None] * counts.sum(axis=0)[None, :]  # [split, class] rows wanted
    have = np.zeros_like(target)
    totals = frac * n
    rng = np.random.default_rng(seed)
    jitter = rng.random(len(frac)) * 1e-6
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]  # big groups first
    assign = np.empty(n_groups, dtype=np.int64)
    for grp in order:
        c = counts[grp]
        # Greedy chi-square: the split where adding this group grows sum((have - target)^2 / target)
        # the least, over its classes and over the split totals; the seeded jitter breaks ties.
        cost = ((2 * (have - target) + c[None, :]) * c[None, :] / np.maximum(target, 1e-9)).sum(axis=1)
        k = c.sum()
        cost += (2 * (have.sum(axis=1) - totals) + k) * k / totals
        s = int(np.argmin(cost + jitter))
        assign[grp] = s
        have[s] += c
    _repair(assign, counts, fractions, target)
    row_split = assign[g_idx]
    return {name: np.flatnonzero(row_split == i) for i, name in enumerate(fractions.names)}


def _repair(assign: np.ndarray, counts: np.ndarray, fractions: SplitFractions, target: np.ndarray) -> None:
    """Move groups so that each class with ≥ 2 groups has one in train and one in test, and each
    class with ≥ 3 groups one in validation too (in place)."""
    names = fractions.names
    for cls in range(counts.shape[1]):
        members = np.flatnonzero(counts[:, cls] > 0)
        if len(members) < MIN_GROUPS_FOR_COVERAGE:
            continue
        wanted = ("train", "test", "val")[: min(len(members), 3)]  # a third group also reaches validation
        required = [names.index(s) for s in wanted if s in names]
        for need in required:
            if np.any(assign[members] == need):
                continue
            have = np.zeros_like(target)
            np.add.at(have, assign, counts)
            # donor: the split holding the most groups of this class, above its target, not emptying a required split
            per_split = np.bincount(assign[members], minlength=len(names))
            donors = [s for s in np.argsort(-(have[:, cls] - target[:, cls]))
                      if per_split[s] > (1 if s in required else 0)]
            if not donors:
                continue
            donor = donors[0]
            movable = [m for m in members if assign[m] == donor]
            grp = min(movable, key=lambda m: (counts[m].sum(), m))  # the smallest group moves
            assign[grp] = need


def sparse_classes(
    labels: Sequence[object] | np.ndarray, groups: Sequence[object] | np.ndarray | None, min_groups: int,
    classes: Sequence[object] = (),
) -> dict[object, int]:
    """Classes with fewer than `min_groups` distinct groups → their group count (0 for a class of
    `classes` that has no row at all).

    Why: a split that keeps groups whole cannot put a class into train, validation and test unless
    the class spans at least three groups; a one-recording ESC-50 class lands wholly in one split
    (in train, it can become the train majority with no test clip: `majority` then scores 0).
    Datasets set `data.min_groups_per_class` to drop such classes before splitting.
    """
    if min_groups <= 0:
        return {}
    y = np.asarray(labels, dtype=object)
    g = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups, dtype=object).astype(str)
    per: dict[object, set[str]] = {c: set() for c in classes}
    for label, group in zip(y.tolist(), g.tolist(), strict=True):
        per.setdefault(label, set()).add(group)
    return {c: len(gs) for c, gs in per.items() if len(gs) < min_groups}


def class_counts(labels: Mapping[str, Sequence[int] | np.ndarray]) -> dict[str, dict[str, int]]:
    """Per split, rows of each class (keys as strings, for run.json)."""
    out: dict[str, dict[str, int]] = {}
    for split, ys in labels.items():
        values, n = np.unique(np.asarray(ys), return_counts=True)
        out[split] = {str(v): int(k) for v, k in zip(values, n, strict=True)}
    return out


def missing_classes(
    counts: Mapping[str, Mapping[str, int]], splits: Sequence[str] = ("train", "test")
) -> dict[str, list[str]]:
    """Classes seen in some split but absent from each of `splits` (empty lists dropped)."""
    every = sorted({c for per in counts.values() for c in per}, key=lambda c: (len(c), c))
    out = {}
    for split in splits:
        absent = [c for c in every if counts.get(split, {}).get(c, 0) == 0]
        if absent:
            out[split] = absent
    return out
