"""`fusebench forget RUN_DIR DATASET/STRATEGY ...`: drop cells from a run so that the next `fusebench run`
into it searches and evaluates them again, from nothing.

Why: a run that outlives its code (the standard suite runs over many sessions) can hold a cell whose
strategy has since changed. Its records then describe a strategy the code no longer has, and its study
cannot be resumed (a changed search space is refused: bench/run/cell.py). Stop 29 widened
`tensor_fusion`'s and `lmf`'s `factor_dim`; the standard run's finished ESC-50 `lmf` cell had to be
searched again, and the first version of this was a one-off script run by hand on the published run.

What a cell leaves in a run, and what goes: its records (`results.jsonl`, rewritten atomically without
them), its test predictions, its search histories, its stored evaluation seeds (`partial/`) and the
optuna study of every search replicate in the run's storage. Records first: a forget cut short leaves
a study and no records, which the next `forget` finishes (or the next run resumes; it is never a
finished row without its search). The run directory's lock is held throughout, so a live sweep is
never edited under its feet; a study with a trial that a live process may be running (a `fusebench
worker` on a shared PostgreSQL, which that lock does not cover) is refused before anything goes.
Everything else (other cells, run.json, the feature cache) is untouched.

A retrieval task's `dual_encoder` cell goes with its re-rankers (`rerank:<strategy>`): each re-ranker's
records re-scored the top-k candidates of the dual encoder of its (replicate, seed), and with
`rerank_negatives: hard` its study searched on negatives that encoder mined. Forgetting the dual encoder
alone would leave finished re-ranker rows over a dual encoder the run no longer has, which the next run
would keep as done; so they are forgotten with it, and `forget` says so.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from fusebench.core.errors import UsageError
from fusebench.core.io import atomic_write_bytes
from fusebench.results.resample import prediction_path
from fusebench.results.retrieval_stats import BASE
from fusebench.run.rundir import RunDirLock
from fusebench.run.seed_store import SeedStore
from fusebench.search.history import history_path
from fusebench.search.stale import FOREIGN_GRACE_S, live_running, wait_for_foreign
from fusebench.search.storage import open_storage, redact
from fusebench.search.study import replicate_study_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forgotten:
    """What `forget_cells` removed for one cell."""

    cell: str
    records: int
    studies: list[str]
    files: list[str]
    because_of: str = ""  # the named cell this one was forgotten with (a re-ranker of a forgotten dual encoder)


def parse_cell(text: str) -> tuple[str, str]:
    """`DATASET/STRATEGY` (the strategy as the run names it: `unimodal:text`, `rerank:concat`, `concat:a+b`)."""
    dataset, sep, strategy = text.partition("/")
    if not sep or not dataset or not strategy:
        raise UsageError(f"cell {text!r}: expected DATASET/STRATEGY, e.g. esc50/lmf")
    return dataset, strategy


def forget_cells(run_dir: Path, cells: list[str], storage_url: str) -> list[Forgotten]:
    """Remove every trace of `cells` from the run at `run_dir` (module docstring); exit 2 (UsageError)
    when a cell names nothing in the run, before anything is removed."""
    run_dir = Path(run_dir)
    results = run_dir / "results.jsonl"
    if not results.is_file():
        raise UsageError(f"{results} not found: pass the --out directory of a `fusebench run`")
    named = list(dict.fromkeys(parse_cell(c) for c in cells))
    with RunDirLock(run_dir):
        storage = open_storage(storage_url)  # with heartbeat settings: a worker's live trials are told apart
        lines = results.read_text(encoding="utf-8").splitlines(keepends=True)
        keyed = [(_cell_of(line), line) for line in lines]
        all_studies = [s.study_name for s in storage.get_all_studies()]
        known = sorted({f"{k[0]}/{k[1]}" for k, _ in keyed if k and k[0]} | {_base_of(n) for n in all_studies})
        # a cell without a search (`majority`, `random`) stopped between seeds has only its stored seeds
        unknown = [f"{d}/{s}" for d, s in named if f"{d}/{s}" not in known and not SeedStore(run_dir, d, s).count()]
        if unknown:
            raise UsageError(_unknown_message(run_dir, unknown, known))
        wanted = _with_rerankers(named, known)
        studies = {c: _replicate_studies(all_studies, *c) for c in wanted}
        _refuse_live_trials(storage, [n for names in studies.values() for n in names], storage_url)
        kept = "".join(line for key, line in keyed if key not in wanted)
        atomic_write_bytes(results, kept.encode("utf-8"))
        out = []
        for (dataset, strategy), because_of in wanted.items():
            files = [prediction_path(run_dir, dataset, strategy)]
            files += [history_path(run_dir, name) for name in studies[(dataset, strategy)]]
            removed = [str(p.relative_to(run_dir)) for p in files if p.is_file()]
            for p in files:
                p.unlink(missing_ok=True)
            store = SeedStore(run_dir, dataset, strategy)
            removed += [f"{store.count()} stored seed(s)"] if store.count() else []
            store.clear()
            for name in studies[(dataset, strategy)]:
                optuna.delete_study(study_name=name, storage=storage)
            n = sum(1 for key, _ in keyed if key == (dataset, strategy))
            out.append(Forgotten(f"{dataset}/{strategy}", n, studies[(dataset, strategy)], removed, because_of))
            log.info("forgot %s/%s%s: %d record(s), studies %s in %s, %s", dataset, strategy,
                     f" (with {because_of})" if because_of else "", n, studies[(dataset, strategy)] or "none",
                     redact(storage_url), removed or "no files")
    return out


def _refuse_live_trials(storage: optuna.storages.BaseStorage, names: list[str], storage_url: str) -> None:
    """Exit 2 when a study to delete has trials that a live process (a `fusebench worker` on the shared
    storage, which the run directory's lock does not cover) may be running, before anything is removed."""
    loaded = [optuna.load_study(study_name=n, storage=storage) for n in names]
    wait_for_foreign(loaded)  # another host's trials: watched until they move or stay idle (stale.FOREIGN_GRACE_S)
    live = {study.study_name: ids for study in loaded if (ids := live_running(study))}
    if live:
        said = "; ".join(f"{n}: trial(s) {', '.join(map(str, ids))}" for n, ids in live.items())
        raise UsageError(f"{redact(storage_url)}: trials running in the studies to forget ({said}): stop the workers "
                         "on this storage first (a killed worker's trial counts as running until its heartbeat is "
                         "older than the grace period, 60 s on PostgreSQL; another host's trial on a journal, until "
                         f"its search clock has not moved for {FOREIGN_GRACE_S:.0f} s), then run `fusebench forget` again")


def _replicate_studies(names: list[str], dataset: str, strategy: str) -> list[str]:
    base = f"{dataset}/{strategy}"
    return sorted(n for n in names if _base_of(n) == base)


def _base_of(study_name: str) -> str:
    """The cell a study belongs to: `<ds>/<st>` for replicate 0, `<ds>/<st>/r<N>` for replicate N >= 1."""
    head, sep, tail = study_name.rpartition("/r")
    number = sep and tail.isascii() and tail.isdigit()  # not "²", which isdigit() accepts and int() does not
    return head if number and replicate_study_name(head, int(tail)) == study_name else study_name


def _with_rerankers(named: list[tuple[str, str]], known: list[str]) -> dict[tuple[str, str], str]:
    """The named cells, each mapped to "", and after a retrieval task's dual encoder every re-ranker of that
    task the run holds, mapped to the dual encoder's name (module docstring)."""
    wanted = {cell: "" for cell in named}
    for dataset, strategy in named:
        if strategy == BASE:
            for name in known:
                ds, _, st = name.partition("/")
                if ds == dataset and st.startswith("rerank:"):
                    wanted.setdefault((ds, st), f"{dataset}/{BASE}")
    return wanted


def _unknown_message(run_dir: Path, unknown: list[str], known: list[str]) -> str:
    close = [c for u in unknown for c in _close_cells(u, known) if c]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"{run_dir}: no records or study of {', '.join(unknown)}.{hint} The run's cells: "
            f"{', '.join(known) or 'none'}")


def _close_cells(cell: str, known: list[str]) -> list[str]:
    """The run's cells nearest to `cell`: by strategy within its dataset when the run has that dataset
    (every cell of a task shares the dataset prefix, which would make all of them "close"), else by name."""
    dataset, _, strategy = cell.partition("/")
    same = [k.partition("/")[2] for k in known if k.partition("/")[0] == dataset]
    if same:
        return [f"{dataset}/{s}" for s in difflib.get_close_matches(strategy, same, n=3, cutoff=0.6)]
    return difflib.get_close_matches(cell, known, n=3, cutoff=0.6)


def _cell_of(line: str) -> tuple[str, str] | None:
    """(dataset, strategy) of a results.jsonl line; None for a line that is not a whole record (kept as is)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    return str(rec.get("dataset") or ""), str(rec.get("strategy") or "")
