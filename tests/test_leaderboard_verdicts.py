"""The leaderboard's words and columns: per-task verdicts, the overall-ranking sentence (Friedman over
non-trivial strategies, post-hoc only when it rejects), Δ/raw/adjusted p, budget columns and flags."""

from __future__ import annotations

import numpy as np

from fusebench.reports.leaderboard import leaderboard, ranking_sentence, task_verdict, to_markdown
from fusebench.reports.ranking import rank
from fusebench.results.records import Record

FAMILIES = {"concat": "early", "gmu": "mid", "logit_mean": "late", "unimodal:a": "unimodal",
            "majority": "baseline", "random": "baseline"}


def _rec(ds: str, strategy: str, score: float, seed: int = 0, **kw) -> Record:
    return Record(dataset=ds, task="classification", strategy=strategy, family=FAMILIES[strategy], modalities=["a"],
                  seed=seed, status="ok", main_metric_name="accuracy", main_metric=score, **kw)


def test_friedman_leaves_out_the_floors_and_gives_no_post_hoc_when_it_does_not_reject():
    rng = np.random.default_rng(1)
    recs = []
    for t in range(4):
        order = rng.permutation(["concat", "gmu", "logit_mean", "unimodal:a"])  # no consistent winner
        recs += [_rec(f"d{t}", s, 0.8 - 0.01 * i) for i, s in enumerate(order)]
        recs += [_rec(f"d{t}", "majority", 0.1), _rec(f"d{t}", "random", 0.05)]  # always last: would drive Friedman
    r = rank(leaderboard(recs))
    assert "majority" not in r.average_rank and "random" not in r.average_rank and len(r.average_rank) == 4
    assert r.friedman_p is not None and r.friedman_p >= 0.05 and not r.rejected
    assert r.critical_difference is None and r.cliques() == []
    text = ranking_sentence(r)
    assert "does not distinguish" in text and "no post-hoc comparison" in text
    assert "CD comparison" not in r.to_markdown()


def test_verdict_names_the_winner_with_delta_interval_and_adjusted_p():
    st = {"best_unimodal": "unimodal:a", "beats_best_unimodal": True, "delta_vs_best_unimodal": 0.05,
          "delta_ci95_low": 0.02, "delta_ci95_high": 0.08, "p_vs_best_unimodal": 0.0001, "p_adj_vs_best_unimodal": 0.0003,
          "test_note": ""}
    recs = [_rec("d", "gmu", 0.85, stats=st), _rec("d", "unimodal:a", 0.80, stats={"best_unimodal": "unimodal:a"})]
    board = leaderboard(recs)
    v = task_verdict(board)
    assert v.startswith("Best strategy: `gmu`") and "`gmu` beats the best unimodal baseline `unimodal:a`" in v
    assert "Δ = +0.0500 [+0.0200, +0.0800]" in v and "Holm-adjusted p = <0.001" in v
    md = to_markdown(board)
    assert f"**Verdict.** {v}" in md and "<0.001 ***" in md and "Δ vs best unimodal" in md


def test_verdict_says_plainly_when_no_fusion_wins_or_when_r1_cannot_test():
    lose = {"best_unimodal": "unimodal:a", "beats_best_unimodal": False, "delta_vs_best_unimodal": 0.01,
            "delta_ci95_low": -0.02, "delta_ci95_high": 0.04, "p_vs_best_unimodal": 0.3, "p_adj_vs_best_unimodal": 0.6}
    board = leaderboard([_rec("d", "gmu", 0.81, stats=lose),
                         _rec("d", "unimodal:a", 0.80, stats={"best_unimodal": "unimodal:a"})])
    assert "No fusion strategy beats the best unimodal baseline `unimodal:a`" in task_verdict(board)
    r1 = dict(lose, beats_best_unimodal=None, p_vs_best_unimodal=None, p_adj_vs_best_unimodal=None,
              test_note="not testable, R=1: ...")
    board = leaderboard([_rec("d", "gmu", 0.81, stats=r1), _rec("d", "unimodal:a", 0.80, stats={"best_unimodal": "unimodal:a"})])
    assert "Not testable with R=1" in task_verdict(board)
    assert "n/t (R=1)" in to_markdown(board) and "search-replicate level is degenerate" in to_markdown(board)


def test_budget_columns_and_degenerate_flag_with_best_epoch():
    dead = {"best_unimodal": "unimodal:a", "degenerate": True}
    recs = [_rec("d", "gmu", 0.02, seed=s, n_trials=3, n_trials_complete=3, n_trials_budget=10, n_trials_pruned=1,
                 n_trials_failed=2, cap_bound=True, search_seconds=12.5, best_epoch=0, stats=dead) for s in (0, 1)]
    recs += [_rec("d", "unimodal:a", 0.8, n_trials=10, n_trials_budget=10, stats={"best_unimodal": "unimodal:a"}),
             _rec("d", "random", 0.02)]
    board = leaderboard(recs)
    row = board.set_index("strategy").loc["gmu"]
    assert row.trials_complete == 3 and row.trials_budget == 10 and row.search_seconds == 12.5  # per search, not per seed
    md = to_markdown(board)
    assert "| 3/10 (1 pruned, 2 failed) |" in md and "⚠ degenerate, best epoch 0; ⏱ cap bound" in md
    assert "Degenerate (mean inside the `random` floor's interval, learned nothing): `gmu` (best epoch 0)" in task_verdict(board)
    assert "| – |" in md  # random: not searched
