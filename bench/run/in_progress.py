"""Cells a run has begun but not finished, and how far each got (for `fusebench timing status`).

On this CPU a token-level cell of the standard suite takes ~10 h on AV-MNIST, longer than the
background time of one session. A status that counts only finished cells then shows nothing moving for
a whole session, so this module reads two things from the run directory. It writes nothing to either.
- **Trials:** the trials each search replicate has spent, counted as the search counts them
  (`trial_counts`), from the run's optuna journal.
- **Seeds:** the evaluation seeds stored so far (RUN_DIR/partial/, bench/run/seed_store.py).

A run whose studies live in SQLite or PostgreSQL has no journal in its directory. Its trials are
then unknown (None), never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from fusebench.run.probe_estimate import is_trivial
from fusebench.run.seed_store import SeedStore
from fusebench.search.storage import _journal_path, kind, open_storage, redact
from fusebench.search.study import replicate_study_name, trial_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellProgress:
    dataset: str
    strategy: str
    trials_spent: list[int] | None  # per search replicate; None when the studies are not in a journal here
    trials_begun: list[int] | None  # per search replicate, every trial created (running, and retried ones, too)
    trials_budget: int
    seeds_stored: int  # evaluation fits stored (replicate × seed), of seeds_wanted
    seeds_wanted: int

    def describe(self) -> str:
        if self.trials_spent is None or self.trials_begun is None:
            search = "search trials unknown (studies outside the run directory)"
        else:
            search = "search " + ", ".join(f"{n}/{self.trials_budget}" for n in self.trials_spent) + " trials"
            extra = sum(self.trials_begun) - sum(self.trials_spent)
            if extra > 0:
                search += f" ({extra} more begun, not counted: running, killed and retried, or stopped by the cap)"
        return f"{self.dataset}/{self.strategy}: {search}; {self.seeds_stored}/{self.seeds_wanted} evaluation seeds stored"


def _trials(journal: Path | str, names: list[str], budget: int) -> dict[str, tuple[int, int]] | None:
    """Per study name: (trials spent, trials created, running ones included), (0, 0) for a study not
    created yet; read from `journal` (a file, or a run's `--storage` URL); None without one."""
    if isinstance(journal, str):  # a storage URL: a journal file is read as below, a database as it is
        if kind(journal) != "journal":
            try:
                return _trials_in(open_storage(journal, heartbeat=False), names, budget, redact(journal))
            except Exception as exc:  # an unreachable database: the trials are unknown, nothing fails
                log.warning("%s: could not read the trials (%s: %s)", redact(journal), type(exc).__name__, exc)
                return None
        journal = _journal_path(journal)
    if not journal.is_file():
        return None
    # optuna's plain file backend: reading replays the log and writes nothing (the run's own
    # repairing backend may rewrite a torn journal; a status must not)
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    except Exception as exc:
        log.warning("%s: could not read the trials (%s: %s); trials in progress unknown", journal, type(exc).__name__, exc)
        return None
    return _trials_in(storage, names, budget, str(journal))


def _trials_in(storage: optuna.storages.BaseStorage, names: list[str], budget: int,
               where: str) -> dict[str, tuple[int, int]] | None:
    try:
        known = {s.study_name for s in storage.get_all_studies()}
        out = {}
        for name in names:
            if name not in known:
                out[name] = (0, 0)
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            out[name] = (min(trial_counts(study, budget).spent, budget), len(study.get_trials(deepcopy=False)))
        return out
    except Exception as exc:  # a journal being appended to, or torn: the status still answers
        log.warning("%s: could not read the trials (%s: %s); trials in progress unknown", where, type(exc).__name__, exc)
        return None


def cells_in_progress(run_dir: Path, plan: dict[str, list[str]], finished: set[tuple[str, str]], replicates: int,
                      trials: int, eval_seeds: int, trivial: set[str], storage: str | None = None) -> list[CellProgress]:
    """Every planned, unfinished, non-trivial cell that has a trial (running ones too) or a stored seed;
    trials from `storage` (a run's URL), by default the run directory's journal."""
    todo = [(ds, s) for ds, strategies in plan.items() for s in strategies if (ds, s) not in finished and s not in trivial]
    names = {cell: [replicate_study_name(f"{cell[0]}/{cell[1]}", r) for r in range(replicates)] for cell in todo}
    found = _trials(storage or run_dir / "optuna.journal", [n for ns in names.values() for n in ns], trials)
    out = []
    for ds, strategy in todo:
        stored = SeedStore(run_dir, ds, strategy).count()
        spent = None if found is None else [found[n][0] for n in names[(ds, strategy)]]
        begun = None if found is None else [found[n][1] for n in names[(ds, strategy)]]
        if stored or (begun and any(begun)):
            out.append(CellProgress(ds, strategy, spent, begun, trials, stored, replicates * eval_seeds))
    return out


def share_done_before(run_dir: Path, plan: dict[str, list[str]], finished: set[tuple[str, str]], replicates: int,
                      trials: int, eval_seeds: int, storage: str | None = None) -> dict[tuple[str, str], float]:
    """Per begun, unfinished cell: the share of its steps (search trials, evaluation seeds) an earlier
    process did. The sweep's rate counts only the rest when the cell finishes here (bench/core/progress.py):
    a cell resumed with 14 of 15 seeds stored is not a whole cell done in minutes. An estimate in steps,
    not seconds: a cap-bound search's unspent trials count as not done (the share errs low); a stored
    seed the cell will not keep (another device or code) counts as done (it errs high)."""
    trivial = {s for ss in plan.values() for s in ss if is_trivial(s)}  # one replicate, no search
    out = {}
    for c in cells_in_progress(run_dir, plan, finished, replicates, trials, eval_seeds, set(), storage):
        steps = eval_seeds if c.strategy in trivial else replicates * (trials + eval_seeds)
        out[(c.dataset, c.strategy)] = min(1.0, (sum(c.trials_spent or []) + c.seeds_stored) / max(steps, 1))
    return out
