"""The batched search objective of a cell: B trials built, grouped and trained as few models as possible.

Each trial is built exactly as the sequential objective (bench/run/cell.py `build_objective`) builds
it: its params sampled by the trial, `torch.manual_seed(search_seed * 100_000 + trial.number)`, the
same seed for its data order. The trials are then grouped by what one vmapped model must share
(`training.members.structure_key`: tensor shapes, non-tensor module attributes, every hyperparameter
but lr, weight decay and dropout; the train settings are the cell's, shared by every trial) and each
group of two or more trains as one model (`fit_members`); a singleton group, a configuration that
cannot be batched (`not_batchable`) or a group whose forward vmap cannot trace trains one trial after
another, as today. Each member reports its own epochs to its own trial and is pruned alone; a member
whose loss goes non-finite fails its own trial only. User attrs per trial: `seed`, `best_epoch`,
`best_step`, and `batch_size` (the size of the group it trained in; 1 = alone).

Before a group, or a trial trained alone, starts, `may_start()` checks the search's cap:
once it is spent, what has not started ends `NotStarted` (not counted: bench/search/trial_batch.py),
so a round of trials that cannot share a shape stops at the cap as the one-by-one search does,
instead of training them all one after another past it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from fusebench.core import progress, space
from fusebench.search.study import Budget, trial_status
from fusebench.search.trial_batch import BatchObjective, NotStarted, Outcome
from fusebench.strategies.base import FusionModel, FusionSpec
from fusebench.training.batched import not_batchable, vmap_failed
from fusebench.training.loop import Batch, TrainConfig, TrainResult, train_model
from fusebench.training.members import Member, fit_members, group_members

log = logging.getLogger(__name__)


def trial_seed(budget: Budget, trial: optuna.Trial) -> int:
    """The seed of a search trial's init and data order (the sequential objective's rule)."""
    return budget.search_seed * 100_000 + trial.number


def _note(trial: optuna.Trial, key: str, value: Any) -> None:
    """Set a user attr of a trial of the round, unless another process has failed it meanwhile (this one
    stalled past the grace): the round goes on, and its tell drops that trial (bench/search/trial_batch.py).
    Before, the attr write raised out of the round, or sent a trained group to the one-by-one fallback."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr(key, value)


def _reporter(trial: optuna.Trial) -> Callable[[int, float], None]:
    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return report


@dataclass(frozen=True)
class TrialInputs:
    """What the trials of one cell train on (built by bench/run/cell.py)."""

    spec: FusionSpec
    train: Batch
    val: Batch
    main_metric: str
    progress_key: str


def build_batch_objective(cell: Any, inputs: TrialInputs, train_cfg: TrainConfig, budget: Budget,
                          device: torch.device) -> BatchObjective:
    """The batched counterpart of `cell.build_objective` (same params, seeds, pruning and user attrs)."""
    spec, train, val = inputs.spec, inputs.train, inputs.val

    def propose(trial: optuna.Trial) -> Any:
        return space.sample_params(trial, cell.info.params)

    def build(trial: optuna.Trial, params: Any) -> FusionModel:
        torch.manual_seed(trial_seed(budget, trial))
        return cell.info.build(spec, params).to(device)

    def sequential(trial: optuna.Trial, model: FusionModel) -> Outcome | TrainResult:
        try:
            return train_model(model, train, val, train_cfg, inputs.main_metric, trial_seed(budget, trial),
                               on_epoch=_reporter(trial))
        except (optuna.TrialPruned, RuntimeError, ValueError) as exc:
            return exc

    def fit_group(trials: list[optuna.Trial], params: list[Any], models: list[FusionModel],
                  may_start: Callable[[], bool]) -> list[Outcome | TrainResult]:
        reason = not_batchable(models, train_cfg, train.labels.device)
        if not reason:
            if not may_start():
                return [NotStarted() for _ in trials]
            members = [Member(m, trial_seed(budget, t), _reporter(t)) for t, m in zip(trials, models)]
            try:
                with warnings.catch_warnings():  # torch's "no batching rule, falling back to a loop" notes
                    warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
                    fits = fit_members(members, train, val, train_cfg, inputs.main_metric)
                for t in trials:
                    _note(t, "batch_size", len(trials))
                return [f.result if f.result is not None else f.error for f in fits]  # type: ignore[misc]
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                reason = vmap_failed(exc)
        if len(trials) > 1:
            log.info("  %s: trials %s trained one after another (%s)", cell.strategy, [t.number for t in trials], reason)
        for t in trials:
            _note(t, "batch_size", 1)
        # rebuilt right before training, so that the global RNG (dropout masks) is where the one-by-one
        # search has it: a trial trained alone gives exactly its sequential result
        out: list[Outcome | TrainResult] = []
        for t, p in zip(trials, params):
            out.append(sequential(t, build(t, p)) if may_start() else NotStarted())
        return out

    def train_batch(trials: list[optuna.Trial], proposals: list[Any], may_start: Callable[[], bool]) -> list[Outcome]:
        outcomes: dict[int, Outcome | TrainResult] = {}
        built: dict[int, FusionModel] = {}
        for i, (trial, params) in enumerate(zip(trials, proposals)):
            try:
                built[i] = build(trial, params)
            except (RuntimeError, ValueError) as exc:
                outcomes[i] = exc
        order = sorted(built)
        for group in group_members([built[i] for i in order]):
            idx = [order[g] for g in group]
            results = fit_group([trials[i] for i in idx], [proposals[i] for i in idx], [built[i] for i in idx], may_start)
            outcomes.update(zip(idx, results))
        out: list[Outcome] = []
        for i, trial in enumerate(trials):
            result = outcomes[i]
            if isinstance(result, NotStarted):
                out.append(result)  # never trained: no progress step, no seed
                continue
            progress.advance(inputs.progress_key, 1, status=trial_status(budget, trial))
            _note(trial, "seed", trial_seed(budget, trial))
            if isinstance(result, TrainResult):
                _note(trial, "best_epoch", result.best_epoch)
                _note(trial, "best_step", result.best_step)
                out.append(result.val_metric)
            else:
                out.append(result)
        return out

    return BatchObjective(propose, train_batch)
