"""Honest statistics for a dataset's cells, from the saved per-example test predictions.

Sources of variance (Bouthillier et al., MLSys 2021, "Accounting for variance in machine learning
benchmarks"): the hyperparameter search (R search replicates per cell), training randomness (K
evaluation seeds per replicate) and the finite test set (examples, grouped in clusters — an image, a
recording, a source file; `results.resample`). A cell's estimate is the mean over its R × K units.

Variance of that mean = V_between + V_test:
  V_between — the nested replicate → seed design: the sample variance of the R replicate means
    (each the mean of its K seeds, so it carries the seed variance too) divided by R, with R − 1
    degrees of freedom. This is the top two levels of the hierarchical bootstrap in closed form:
    bootstrapping 2–5 replicates underestimates their variance by (R − 1)/R and has no tail, the
    t quantile on R − 1 degrees of freedom does not.
  V_test — the test-cluster bootstrap (`N_RESAMPLES` cluster resamples, units held fixed).
Interval: mean ± t(0.975, df) · sqrt(V), df by Welch–Satterthwaite (V_test counts as infinite df),
clipped to the metric's range (`core.metrics.RANGES`: [0, 1] for accuracy, macro-F1, AUROC; the
difference of two such means to [−1, 1]). A symmetric interval around a mean near a bound leaves
the range (ESC-50 `random` at 0.019 ± 0.046 gave ci95_low = −0.027); the metric cannot take those
values, so clipping only removes impossible values and never lowers coverage. `ci_clipped` says
when it happened.

With R = 1 the search variance cannot be estimated: V_between falls back to the variance over the
K seeds / K (df K − 1) and the interval is marked `includes_search_variance = False` — it is too
narrow by the unknown search effect. The paired test is then *not run* (p = None, "not testable,
R = 1"): a search effect alone made an A/A test reject 42–47 % of the time at α = 0.05.

Paired test (R ≥ 2 in both cells), A vs B on their common test examples:
  Δ = mean_A − mean_B; V = V_between(A) + V_between(B) + V_test(Δ), where V_test(Δ) resamples the
  *same* clusters for both (the pairing: both see the same hard examples); replicates and seeds of
  two cells are independent searches and trainings, so they are not paired. t = Δ / sqrt(V),
  two-sided p from Student's t with Welch–Satterthwaite df. An analytic tail, so p can be as small
  as a real effect makes it and survive a multiple-comparison correction.

Multiple comparisons: per task, the family of fusion-vs-best-unimodal tests (fusion families only,
those with a p) is corrected with Holm's step-down method (controls the family-wise error rate;
chosen over Benjamini–Hochberg because "beats the best unimodal baseline" is a per-strategy claim
a reader takes at face value). `p_vs_best_unimodal` is raw, `p_adj_vs_best_unimodal` adjusted.
The best unimodal cell is chosen on *validation* (highest mean `val_main_metric`; test mean only
when no validation score was recorded), so the choice does not peek at the test set.

`beats_best_unimodal` (fusion families only; None for unimodal and baseline rows, and when not
testable): True iff Δ > 0 and the Holm-adjusted p < ALPHA (0.05).

`degenerate` (trainable rows): the mean lies inside the `random` floor's interval — a model that
learned nothing (e.g. early stopping restored epoch 0); `best_epochs` lists where each unit stopped.
The floor's interval uses the normal quantile, not t on K − 1 df: `random`'s seed-to-seed spread is
sampling noise of a chance-level scorer, and with K = 2 the t(1) quantile (12.7) would stretch the
floor over every model of a small task.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from fusebench.core.encmode import split_mode
from fusebench.core.metrics import metric_range
from fusebench.results.records import Record
from fusebench.results.resample import (
    N_RESAMPLES,
    Predictions,
    bootstrap_unit_means,
    cluster_weights,
    prediction_path,
    unit_scores,
)

log = logging.getLogger(__name__)

__all__ = [
    "N_RESAMPLES",
    "Predictions",
    "attach_stats",
    "bootstrap_ci",
    "cell_estimate",
    "dataset_stats",
    "holm",
    "paired_p_value",
    "paired_test",
    "prediction_path",
]

ALPHA = 0.05
LATE_FUSION_BASELINE = "logit_mean"
FUSION_FAMILIES = ("early", "mid", "late")
RANDOM_FLOOR = "random"
CI_METHOD = (f"variance decomposition: search replicates → seeds (t on R−1 df) + test-cluster bootstrap "
             f"({N_RESAMPLES} resamples), Welch–Satterthwaite df; clipped to the metric's range")
TEST_METHOD = "paired test: Δ / sqrt(V_between(A) + V_between(B) + paired cluster-bootstrap V_test), Student t, two-sided"
CORRECTION = "holm"
NOT_TESTABLE_R1 = "not testable, R=1: one search per cell, the search variance cannot be estimated"


@dataclass(frozen=True)
class Estimate:
    """A cell's (or a difference's) mean with its variance components."""

    mean: float
    var_between: float  # replicate/seed level, variance of the mean
    df_between: float  # its degrees of freedom (inf when it is 0)
    var_test: float  # test-cluster level, variance of the mean
    n_replicates: int

    @property
    def se(self) -> float:
        return float(np.sqrt(self.var_between + self.var_test))

    @property
    def df(self) -> float:
        return _satterthwaite([(self.var_between, self.df_between)], self.var_between + self.var_test)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se if np.isfinite(self.df) else \
            float(sps.norm.ppf(0.5 + level / 2)) * self.se
        return self.mean - half, self.mean + half


def clip_interval(lo: float, hi: float, bounds: tuple[float, float]) -> tuple[float, float, bool]:
    """(lo, hi) clipped to `bounds` (the metric's range), and whether clipping changed it."""
    clo, chi = max(lo, bounds[0]), min(hi, bounds[1])
    return clo, chi, (clo, chi) != (lo, hi)


def _satterthwaite(parts: list[tuple[float, float]], total: float) -> float:
    denom = sum(v * v / d for v, d in parts if v > 0 and np.isfinite(d) and d > 0)
    return float(total * total / denom) if denom > 0 else float("inf")


def _between(p: Predictions, scores: np.ndarray) -> tuple[float, float, float]:
    """(grand mean, variance of the grand mean from replicates — or seeds when R = 1 —, its df)."""
    reps = np.unique(p.replicates)
    rep_means = np.array([scores[p.replicates == r].mean() for r in reps])
    if len(reps) >= 2:
        return float(rep_means.mean()), float(rep_means.var(ddof=1) / len(reps)), float(len(reps) - 1)
    if len(scores) >= 2:
        return float(scores.mean()), float(scores.var(ddof=1) / len(scores)), float(len(scores) - 1)
    return float(scores.mean()), 0.0, float("inf")


def cell_estimate(p: Predictions, metric: str) -> Estimate:
    mean, vb, dfb = _between(p, unit_scores(p, metric))
    vt = float(bootstrap_unit_means(p, metric, cluster_weights(p.clusters)).var(ddof=1))
    return Estimate(mean, vb, dfb, vt, p.n_replicates)


def bootstrap_ci(p: Predictions, metric: str) -> tuple[float, float]:
    """95 % interval of a cell's mean main metric, inside the metric's range (module doc)."""
    lo, hi, _ = clip_interval(*cell_estimate(p, metric).interval(), metric_range(metric))
    return lo, hi


@dataclass(frozen=True)
class PairedResult:
    delta: float
    ci95: tuple[float, float]
    p: float | None  # None when not testable (R = 1 in either cell)
    df: float
    note: str = ""


def paired_test(a: Predictions, b: Predictions, metric: str, allow_r1: bool = False) -> PairedResult | None:
    """A vs B on their common test examples (module doc); None when they share fewer than 2 examples.

    `allow_r1` tests R = 1 cells anyway, with the seed variance standing in for the search variance —
    the pre-issue-10 protocol, kept only so `fusebench calibrate` can show what it gets wrong."""
    a, b = a.common(b)
    if len(a.index) < 2:
        return None
    if not np.array_equal(a.labels, b.labels):
        raise ValueError("paired test: the two cells disagree on the test labels")
    ma, vba, dfa = _between(a, unit_scores(a, metric))
    mb, vbb, dfb = _between(b, unit_scores(b, metric))
    weights = cluster_weights(a.clusters)
    vt = float((bootstrap_unit_means(a, metric, weights) - bootstrap_unit_means(b, metric, weights)).var(ddof=1))
    delta, var = ma - mb, vba + vbb + vt
    df = _satterthwaite([(vba, dfa), (vbb, dfb)], var)
    q = float(sps.t.ppf(0.975, df)) if np.isfinite(df) else float(sps.norm.ppf(0.975))
    ci = (delta - q * np.sqrt(var), delta + q * np.sqrt(var))
    if (a.n_replicates < 2 or b.n_replicates < 2) and not allow_r1:
        return PairedResult(delta, ci, None, df, NOT_TESTABLE_R1)
    if var <= 0:
        p = 1.0 if delta == 0 else 0.0
    else:
        t = abs(delta) / np.sqrt(var)
        p = float(2 * (sps.t.sf(t, df) if np.isfinite(df) else sps.norm.sf(t)))
    return PairedResult(delta, ci, p, df)


def paired_p_value(a: Predictions, b: Predictions, metric: str) -> float | None:
    r = paired_test(a, b, metric)
    return None if r is None else r.p


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (monotone, capped at 1)."""
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(names), 0.0, {}
    for i, name in enumerate(names):
        running = max(running, min(1.0, (m - i) * pvalues[name]))
        out[name] = running
    return out


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _read(run_dir: Path, dataset: str, strategies: list[str]) -> dict[str, Predictions]:
    preds = {}
    for s in strategies:
        path = prediction_path(run_dir, dataset, s)
        if path.is_file():
            try:
                preds[s] = Predictions.read(path)
            except Exception as exc:
                log.warning("%s: unreadable predictions (%s); no CI for %s", path, exc, s)
    return preds


def dataset_stats(records: list[Record], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Statistics for every ok cell of ONE dataset (`records` = that dataset's records), keyed by strategy."""
    ok: dict[str, list[Record]] = {}
    for r in records:
        if r.status == "ok" and r.main_metric is not None:
            ok.setdefault(r.strategy, []).append(r)
    if not ok:
        return {}
    first = next(iter(ok.values()))[0]
    dataset, metric = first.dataset, first.main_metric_name
    family = {s: rs[0].family for s, rs in ok.items()}
    means = {s: float(np.mean([r.main_metric for r in rs])) for s, rs in ok.items()}
    val_means = {s: _mean([r.val_main_metric for r in rs]) for s, rs in ok.items()}
    preds = _read(run_dir, dataset, list(ok))
    unimodal = [s for s in ok if family[s] == "unimodal"]
    chosen_on = "validation" if unimodal and all(val_means[s] is not None for s in unimodal) else "test"
    key = (lambda s: val_means[s]) if chosen_on == "validation" else (lambda s: means[s])
    # Encoder modes are never pooled: a row is compared with the best unimodal row and the late-fusion
    # row of its own mode (`concat+ft:last:2` with `unimodal:*+ft:last:2`), the frozen ones when its
    # mode has none.
    mode_of = {s: split_mode(s)[1] for s in ok}

    def best_of(mode: str) -> str | None:
        pool = [u for u in unimodal if mode_of[u] == mode] or [u for u in unimodal if mode_of[u] == "frozen"]
        return max(pool, key=key) if pool else None  # type: ignore[arg-type]

    best_for = {s: best_of(mode_of[s]) for s in ok}
    late_for = {s: next((b for b in (LATE_FUSION_BASELINE + ("" if m == "frozen" else f"+ft:{m}"), LATE_FUSION_BASELINE)
                         if b in ok), None) for s, m in mode_of.items()}

    def vs(s: str, base: str | None) -> PairedResult | None:
        if base is None or s == base or s not in preds or base not in preds:
            return None
        try:
            return paired_test(preds[s], preds[base], metric)
        except Exception as exc:
            log.warning("%s: paired test %s vs %s failed: %s", dataset, s, base, exc)
            return None

    est: dict[str, Estimate] = {}
    for s in preds:
        try:
            est[s] = cell_estimate(preds[s], metric)
        except Exception as exc:
            log.warning("%s: interval of %s failed: %s", dataset, s, exc)
    uni_res = {s: vs(s, best_for[s]) for s in ok}
    family_p = {s: r.p for s, r in uni_res.items() if family[s] in FUSION_FAMILIES and r is not None and r.p is not None}
    adjusted = holm(family_p)
    floor = est.get(RANDOM_FLOOR)
    bounds = metric_range(metric)
    delta_bounds = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    out = {}
    for s, rs in ok.items():
        scores = np.array([r.main_metric for r in rs], dtype=float)
        e, u, late_res = est.get(s), uni_res[s], vs(s, late_for[s])
        best_uni, late = best_for[s], late_for[s]
        lo, hi, clipped = clip_interval(*e.interval(), bounds) if e else (None, None, False)
        dlo, dhi, _ = clip_interval(*u.ci95, delta_bounds) if u else (None, None, False)
        beats = None
        if family[s] in FUSION_FAMILIES and s in adjusted and u is not None:
            beats = bool(u.delta > 0 and adjusted[s] < ALPHA)
        degenerate = None
        if family[s] != "baseline" and floor is not None:
            flo, fhi = dataclasses.replace(floor, df_between=float("inf")).interval()  # normal quantile: see module doc
            degenerate = bool(flo <= means[s] <= fhi)
        out[s] = {
            "metric": metric,
            "mean": means[s],
            "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "n_seeds": len({r.seed for r in rs}),
            "n_replicates": e.n_replicates if e else 1,
            "n_units": len(rs),
            "n_examples": int(len(preds[s].index)) if s in preds else None,
            "n_clusters": int(len(np.unique(preds[s].clusters))) if s in preds else None,
            "ci95_low": lo,
            "ci95_high": hi,
            "ci_clipped": clipped,
            "se_between": float(np.sqrt(e.var_between)) if e else None,
            "se_test": float(np.sqrt(e.var_test)) if e else None,
            "includes_search_variance": bool(e and e.n_replicates >= 2),
            "ci_method": CI_METHOD,
            "best_unimodal": best_uni,
            "best_unimodal_mean": means[best_uni] if best_uni else None,
            "best_unimodal_chosen_on": chosen_on,
            "delta_vs_best_unimodal": u.delta if u else None,
            "delta_ci95_low": dlo,
            "delta_ci95_high": dhi,
            "p_vs_best_unimodal": u.p if u else None,
            "p_adj_vs_best_unimodal": adjusted.get(s),
            "correction": CORRECTION,
            "test_note": u.note if u else "",
            "late_fusion_baseline": late,
            "p_vs_late_fusion": late_res.p if late_res else None,
            "test": TEST_METHOD,
            "alpha": ALPHA,
            "beats_best_unimodal": beats,
            "degenerate": degenerate,
            "best_epochs": [r.best_epoch for r in rs if r.best_epoch is not None],
        }
    return out


def attach_stats(records: list[Record], run_dir: Path, dataset: str) -> list[Record]:
    """All records, with the `stats` of `dataset`'s ok records (re)computed from its predictions."""
    stats = dataset_stats([r for r in records if r.dataset == dataset], run_dir)
    return [
        dataclasses.replace(r, stats=stats[r.strategy]) if r.dataset == dataset and r.status == "ok" and r.strategy in stats
        else r
        for r in records
    ]
