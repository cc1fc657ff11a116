"""Ranking across tasks: average rank per strategy, Friedman test and — only when it rejects — the
Nemenyi critical difference (Demšar 2006, "Statistical Comparisons of Classifiers over Multiple Data
Sets", JMLR 7).

Per task, strategies are ranked by mean main metric (1 = best, ties share the mean rank). Unimodal
cells (`unimodal:<view>`) differ across tasks, so the best of them on each task stands in as
`unimodal (best)`. On a retrieval task a fusion strategy's entry is its re-ranker (`rerank:<name>` ranks
as `<name>`), and the dual encoder, the task's model without fusion, stands in as `unimodal (best)`: without
that a retrieval task shares no entry with the classification tasks and the ranking of a full run is empty.
The trivial floors (family `baseline`: `majority`, `random`) are left out: they
lose everywhere, and ranking them drove the Friedman p-value while saying nothing about fusion.
A task still in progress (provisional statistics, bench/results/provisional.py) is named in the sentence;
a task with a single entry so far (the dual encoder, first of its task to run) is left out. Only
strategies present on every task enter the comparison. When Friedman does not reject at α = 0.05,
no post-hoc comparison is made and no critical difference is given (`critical_difference` is None),
so neither the leaderboard nor the CD diagram can suggest a difference the omnibus test did not find.
The CD is Nemenyi's, q_α(k, ∞)/√2 · √(k(k+1)/(6N)), as in Demšar's diagrams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
TRIVIAL_FAMILIES = ("baseline",)
DUAL_ENCODER, RERANK = "dual_encoder", "rerank:"  # a retrieval task's cells (bench/run/retrieval_cell.py): its
# baseline, the model its fusion re-rankers must beat, and their prefix


@dataclass(frozen=True)
class Ranking:
    average_rank: pd.Series  # strategy → mean rank over tasks, best first
    n_tasks: int
    friedman_p: float | None
    critical_difference: float | None  # Nemenyi CD at alpha = 0.05; None unless Friedman rejects
    provisional: tuple[str, ...] = ()  # "task: N of M cells done" of each task still in progress

    @property
    def rejected(self) -> bool:
        return self.friedman_p is not None and self.friedman_p < ALPHA

    def cliques(self) -> list[list[str]]:
        """Maximal runs of strategies (in rank order) whose average ranks all lie within the critical
        difference of each other — the thick bars of a Demšar CD diagram. Single strategies are left out."""
        if self.critical_difference is None or self.average_rank.empty:
            return []
        names, ranks = list(self.average_rank.index), self.average_rank.to_numpy(float)
        groups: list[list[str]] = []
        for i in range(len(names)):
            j = i
            while j + 1 < len(names) and ranks[j + 1] - ranks[i] < self.critical_difference:
                j += 1
            group = names[i:j + 1]
            if len(group) > 1 and not any(set(group) <= set(g) for g in groups):
                groups.append(group)
        return groups

    def sentence(self) -> str:
        """What the ranking analysis allows one to say, in words (also rendered in the HTML report)."""
        k = len(self.average_rank)
        if k == 0:
            return "No strategy ran on every task: no overall ranking."
        if self.provisional:
            return (f"Provisional ({'; '.join(self.provisional)}): over the finished cells of "
                    f"{'that task' if len(self.provisional) == 1 else 'those tasks'}, so ranks, the test and the "
                    f"critical difference can change. " + self._claim(k))
        return self._claim(k)

    def _claim(self, k: int) -> str:
        best = f"`{self.average_rank.index[0]}` ({self.average_rank.iloc[0]:.2f})"
        if self.friedman_p is None:
            return (f"Too few tasks ({self.n_tasks}) or non-trivial strategies ({k}) for a Friedman test: the average "
                    f"ranks (best {best}) are descriptive only.")
        if not self.rejected:
            return (f"Friedman test over {k} non-trivial strategies on {self.n_tasks} tasks: p = {_p(self.friedman_p)} "
                    f"≥ {ALPHA} — the ranking does not distinguish them (best average rank {best}, not significantly "
                    "so); no post-hoc comparison or critical difference is given.")
        best_rank = self.average_rank.iloc[0]
        cd = self.critical_difference or 0.0
        close = [f"`{n}`" for n, r in self.average_rank.iloc[1:].items() if r - best_rank < cd]
        worse = [f"`{n}`" for n, r in self.average_rank.iloc[1:].items() if r - best_rank >= cd]
        return (f"Friedman test over {k} non-trivial strategies on {self.n_tasks} tasks: p = {_p(self.friedman_p)} < "
                f"{ALPHA}; Nemenyi critical difference {cd:.2f} ranks. {best} is significantly better than "
                + (", ".join(worse) or "none of the others") + "; not distinguishable from "
                + (", ".join(close) or "none") + ".")

    def to_markdown(self) -> str:
        if self.average_rank.empty:
            return ""
        lines = ["## Overall ranking across tasks", "",
                 f"Average rank over {self.n_tasks} task(s) (1 = best; `unimodal (best)` is the best unimodal view per "
                 "task, the dual encoder on a retrieval task, where `rerank:<name>` ranks as `<name>`; the `majority`/`random` "
                 "floors are left out).", "", self.sentence(), ""]
        if self.rejected and self.critical_difference is not None and len(self.average_rank) > 1:
            best, best_rank = self.average_rank.index[0], self.average_rank.iloc[0]
            close = [n for n, r in self.average_rank.iloc[1:].items() if r - best_rank < self.critical_difference]
            worse = [n for n, r in self.average_rank.iloc[1:].items() if r - best_rank >= self.critical_difference]
            lines += [f"CD comparison: `{best}` ({best_rank:.2f}) is not significantly better than "
                      + (", ".join(f"`{n}`" for n in close) or "—") + "; significantly worse: "
                      + (", ".join(f"`{n}`" for n in worse) or "none") + ".", ""]
        lines += ["| rank | strategy | average rank |", "|---:|---|---:|"]
        for i, (name, r) in enumerate(self.average_rank.items(), 1):
            lines.append(f"| {i} | `{name}` | {r:.2f} |")
        return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def _entry(strategy: str, family: str) -> str | None:
    """The ranking entry of a leaderboard row; None for a floor."""
    if strategy == DUAL_ENCODER or family == "unimodal":
        return "unimodal (best)"
    if family in TRIVIAL_FAMILIES:
        return None
    return strategy.removeprefix(RERANK)


def _per_task_scores(board: pd.DataFrame) -> pd.DataFrame:
    ok = board[board["status"] == "ok"].copy()
    noted = ok.get("provisional", pd.Series("", index=ok.index)).fillna("").astype(str).ne("")
    ok = ok[~ok.dataset.isin(set(ok.dataset[noted])) | noted]  # a task in progress: its finished cells only, the
    # ones bench/results/provisional.py gave statistics; not a cell that stored some of its seeds
    ok["entry"] = [_entry(s, f) for s, f in zip(ok.strategy, ok.family, strict=True)]
    ok = ok[ok.entry.notna()]
    scores = ok.groupby(["dataset", "entry"])["mean"].max().unstack("entry")
    entries = scores.notna().sum(axis=1)
    if (entries >= 2).any():  # a task of one entry beside larger ones (a retrieval task whose dual encoder alone
        scores = scores[entries >= 2]  # has run) ranks nothing and would cut the ranking down to that entry
    return scores.dropna(axis=1)  # strategies present on every task


def rank(board: pd.DataFrame) -> Ranking:
    if board.empty:
        return Ranking(pd.Series(dtype=float), 0, None, None)
    scores = _per_task_scores(board)
    n_tasks, k = scores.shape
    if n_tasks == 0 or k == 0:
        return Ranking(pd.Series(dtype=float), n_tasks, None, None)
    ranks = scores.rank(axis=1, ascending=False, method="average")
    avg = ranks.mean(axis=0).sort_values()
    friedman_p = cd = None
    if n_tasks >= 2 and k >= 3:
        friedman_p = float(stats.friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns]).pvalue)
        if np.isnan(friedman_p):  # every task ranks identically tied
            friedman_p = 1.0
        if friedman_p < ALPHA:
            q_alpha = stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / np.sqrt(2)
            cd = float(q_alpha * np.sqrt(k * (k + 1) / (6.0 * n_tasks)))
    notes = {d: n for d, n in zip(board.dataset, board.get("provisional", [""] * len(board)), strict=True)
             if isinstance(n, str) and n}
    in_progress = tuple(f"{d}: {n}" for d, n in sorted(notes.items()) if d in scores.index)
    return Ranking(avg, n_tasks, friedman_p, cd, in_progress)
