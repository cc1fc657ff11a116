"""Batched trials (issue 15): trials that share a shape train as one vmapped model, each member
exactly its own configuration's sequential fit; the batched search spends the same budget.

Generated from the registry: for every trainable strategy, three configurations of one shape that
differ in learning rate and weight decay (dropout 0) are fitted as one batched model and each one
alone; validation metric, best epoch/step and test predictions must match within float tolerance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from fusebench.search.study import Budget, open_study, trial_counts
from fusebench.search.trial_batch import BatchObjective, run_batched_search, trials_batched
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.loop import Batch, TrainConfig, predict_proba, train_model
from fusebench.training.members import Member, NonFiniteLoss, fit_members, group_members

pytestmark = pytest.mark.usefixtures("one_thread")

N, C = 200, 3
CFG = TrainConfig(epochs=4, patience=2, batch_size=32)
NAMES = [n for n in STRATEGIES.names() if STRATEGIES.get(n).trainable]
HPS = [(1e-3, 1e-4), (3e-3, 1e-2), (5e-4, 1e-6)]  # (lr, weight_decay) per member
SEEDS = [7, 8, 9]


def _data(kind: str) -> tuple[FusionSpec, Batch, Batch, Batch]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    if kind == "pooled":
        spec = FusionSpec({"a": 8, "b": 6}, {"a": 4, "b": 3}, C)
        x = {"a": torch.randn(N, 8, generator=g) + y[:, None] * 0.7, "b": torch.randn(N, 6, generator=g)}
    else:
        spec = FusionSpec({"a": 5, "b": 5}, {"a": 4, "b": 3}, C)
        x = {"a": torch.randn(N, 4, 5, generator=g) + y[:, None, None] * 0.7, "b": torch.randn(N, 3, 5, generator=g)}
        x["b"][:5, -1] = 0.0  # some padding rows
    parts = [Batch({k: v[a:b] for k, v in x.items()}, y[a:b]) for a, b in ((0, 110), (110, 160), (160, N))]
    return spec, *parts  # type: ignore[return-value]


def _setup(name: str, dropouts=(0.0, 0.0, 0.0)):
    info = STRATEGIES.get(name)
    spec, train, val, test = _data(info.input_kind)
    if info.per_modality:
        spec = spec.restrict(["a"])
        train, val, test = (Batch({"a": b.inputs["a"]}, b.labels) for b in (train, val, test))
    defaults = info.params()
    configs = [dataclasses.replace(defaults, lr=lr, weight_decay=wd, dropout=p) for (lr, wd), p in zip(HPS, dropouts)]

    def build(k: int) -> torch.nn.Module:
        torch.manual_seed(SEEDS[k])
        return info.build(spec, configs[k])

    return build, train, val, test


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_batched_trial_member_equals_its_sequential_trial(name):
    build, train, val, test = _setup(name)
    models = [build(k) for k in range(3)]
    assert group_members(models) == [[0, 1, 2]], f"{name}: one shape, lr/wd only differ: one group"
    fits = fit_members([Member(m, s) for m, s in zip(models, SEEDS)], train, val, CFG, "accuracy")
    for k, fit in enumerate(fits):
        want = train_model(build(k), train, val, CFG, "accuracy", SEEDS[k])
        got = fit.result
        assert fit.error is None and got is not None
        assert (got.best_epoch, got.best_step, got.steps_run) == (want.best_epoch, want.best_step, want.steps_run), (
            f"{name} member {k}")
        assert got.val_metric == pytest.approx(want.val_metric, abs=1e-6), f"{name} member {k}"
        np.testing.assert_allclose(predict_proba(got.model, test.inputs), predict_proba(want.model, test.inputs),
                                   atol=1e-3, err_msg=f"{name} member {k}")


def test_batched_members_keep_their_own_dropout_probability():
    """Dropout p is a per-member buffer: a p=0 member batched with p=0.5 members is still exactly its
    sequential fit, while a p=0.5 member is not the p=0 fit of the same seed and lr."""
    build, train, val, test = _setup("concat", dropouts=(0.0, 0.5, 0.5))
    models = [build(k) for k in range(3)]
    assert group_members(models) == [[0, 1, 2]]
    fits = fit_members([Member(m, s) for m, s in zip(models, SEEDS)], train, val, CFG, "accuracy")
    want = train_model(build(0), train, val, CFG, "accuracy", SEEDS[0])
    np.testing.assert_allclose(predict_proba(fits[0].result.model, test.inputs), predict_proba(want.model, test.inputs),
                               atol=1e-5)
    assert all(type(m).__name__ == "Dropout" for model in models for m in model.modules() if "Dropout" in type(m).__name__)


def test_batched_grouping_by_shape_and_attributes():
    """hidden_dim changes shapes; attention dropout is a float attribute of nn.MultiheadAttention
    (not stacked): both split groups. Plain dropout does not."""
    info = STRATEGIES.get("concat")
    spec = _data("pooled")[0]
    p = info.params()
    models = [info.build(spec, dataclasses.replace(p, hidden_dim=h, dropout=d)) for h, d in ((32, 0.1), (64, 0.1), (32, 0.3))]
    assert group_members(models) == [[0, 2], [1]]
    tok = STRATEGIES.get("early_transformer")
    tspec = _data("tokens")[0]
    tp = tok.params()
    models = [tok.build(tspec, dataclasses.replace(tp, dropout=d, lr=lr)) for d, lr in ((0.1, 1e-3), (0.2, 1e-3), (0.1, 1e-2))]
    assert group_members(models) == [[0, 2], [1]]


def test_batched_pruned_and_non_finite_members_stop_alone():
    """A member pruned at epoch 1 and one whose weights are poisoned (non-finite loss) stop with their
    own error; the third member is still exactly its sequential fit."""
    build, train, val, test = _setup("concat")
    models = [build(k) for k in range(3)]
    with torch.no_grad():
        next(models[2].parameters()).fill_(float("nan"))

    def prune_at_1(epoch: int, value: float) -> None:
        if epoch == 1:
            raise optuna.TrialPruned()

    fits = fit_members([Member(models[0], SEEDS[0]), Member(models[1], SEEDS[1], prune_at_1), Member(models[2], SEEDS[2])],
                       train, val, CFG, "accuracy")
    assert isinstance(fits[1].error, optuna.TrialPruned) and fits[1].result is None
    assert isinstance(fits[2].error, NonFiniteLoss) and fits[2].result is None
    want = train_model(build(0), train, val, CFG, "accuracy", SEEDS[0])
    assert fits[0].error is None and fits[0].result.val_metric == pytest.approx(want.val_metric, abs=1e-6)
    np.testing.assert_allclose(predict_proba(fits[0].result.model, test.inputs), predict_proba(want.model, test.inputs),
                               atol=1e-3)


def _toy_objective(log: list[list[int]]) -> BatchObjective:
    """A generated objective: trial n completes with value n, every third is pruned, n=4 fails."""

    def propose(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    def train(trials: list[optuna.Trial], xs: list[float], may_start) -> list:
        log.append([t.number for t in trials])
        out: list = []
        for t, x in zip(trials, xs):
            t.report(x, 0)
            out.append(optuna.TrialPruned() if t.number % 3 == 2 else RuntimeError("boom") if t.number == 4 else x)
        return out

    return BatchObjective(propose, train)


def test_batched_search_counts_and_tells_every_trial_once():
    budget = Budget(trials=7, timeout_s=60, seeds=1)
    study = open_study("t/s", optuna.storages.InMemoryStorage(), 0)
    rounds: list[list[int]] = []
    run_batched_search(study, _toy_objective(rounds), budget, 3)
    assert rounds == [[0, 1, 2], [3, 4, 5], [6]]
    states = [t.state for t in study.trials]
    assert states.count(TrialState.RUNNING) == 0 and len(states) == 7
    counts = trial_counts(study, budget.trials)
    assert (counts.complete, counts.pruned, counts.failed, counts.spent) == (4, 2, 1, 7)
    assert "RuntimeError: boom" in study.trials[4].user_attrs["fail_reason"]
    assert study.trials[2].value == pytest.approx(study.trials[2].params["x"])  # pruned: its last reported value


def test_batched_search_proposes_the_sequential_start_up_trials():
    """The trial-seeded TPE draws each trial from its own stream: the random start-up proposals of a
    batched search are those of a one-by-one search, and two batched searches are identical."""
    def params(batch: int) -> list[float]:
        study = open_study("t/s", optuna.storages.InMemoryStorage(), 5)
        run_batched_search(study, _toy_objective([]), Budget(trials=6, timeout_s=60, seeds=1), batch)
        return [t.params["x"] for t in study.trials]

    assert params(3) == params(3) == params(1)


@pytest.mark.slow
def test_batched_run_end_to_end_is_deterministic(tmp_path, synthetic_bundle, monkeypatch):
    """A real run on the generated dataset, 6 trials asked at once: trials that share a shape train
    together (records say how many), the budget is spent exactly, and a second run gives the same
    records."""
    from fusebench.cli import main
    from fusebench.results.records import load_records
    from fusebench.search.storage import open_storage

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "6", "--seeds", "2",
                     "--trial-batch", "6", "--data-dir", str(data), "--out", str(out)]) == 0
        runs.append(load_records(out / "results.jsonl"))
        study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{out / 'optuna.journal'}"))
        assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0
        assert trial_counts(study, 6).spent == 6 and trials_batched(study) >= 2
    a, b = runs
    assert [r.trials_batched for r in a] == [r.trials_batched for r in b] and a[0].trials_batched >= 2
    assert [(r.n_trials, r.n_trials_complete, r.n_trials_pruned, r.n_trials_failed) for r in a] == \
        [(r.n_trials, r.n_trials_complete, r.n_trials_pruned, r.n_trials_failed) for r in b]
    assert a[0].n_trials == 6
    assert [r.params for r in a] == [r.params for r in b]
    assert [r.main_metric for r in a] == pytest.approx([r.main_metric for r in b], abs=1e-6)


@pytest.mark.slow
def test_batched_search_resumes_after_kill_9(tmp_path, synthetic_bundle, monkeypatch):
    """A real `fusebench run --trial-batch 3` subprocess is SIGKILLed while a batch is training (every
    trial of the batch RUNNING); the re-run marks those trials stale (FAIL, not counted), retries them
    and ends with exactly the budget of finished trials and the records of an uninterrupted run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fusebench.results.records import load_records
    from fusebench.search.storage import open_storage
    from tests.killpoint import LoggedPopen, kill_at

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "fusebench", "run", "--datasets", "toy", "--strategies", "concat", "--trials", "6",
            "--seeds", "2", "--epochs", "30", "--trial-batch", "3", "--data-dir", str(data), "--out", str(out)]
    repo = Path(__file__).resolve().parent.parent
    proc = LoggedPopen(args, tmp_path / "killed.log", cwd=repo, env=os.environ.copy())
    journal, storage = out / "optuna.journal", []

    def live_batch() -> list[int] | None:
        """Two or more trials of a batch RUNNING (read again with the run frozen before the kill). The
        storage is opened once: opening takes the journal's lock, which the frozen run may hold."""
        if not journal.is_file():
            return None
        storage[:] = storage or [open_storage(f"journal:///{journal}")]
        try:
            trials = optuna.load_study(study_name="toy/concat", storage=storage[0]).get_trials(deepcopy=False)
        except KeyError:
            return None
        live = [t.number for t in trials if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
        return live if len(live) >= 2 else None

    try:
        running = kill_at(proc, live_batch, timeout_s=180, settled=lambda: not Path(f"{journal}.lock").exists())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert running, "kill point (two trials of a batch RUNNING) never reached"
    done = subprocess.run(args, cwd=repo, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{journal}"))
    by_number = {t.number: t for t in study.trials}
    for n in running:
        assert by_number[n].state == TrialState.FAIL and by_number[n].user_attrs.get("stale") is True
    counts = trial_counts(study, 6)
    assert counts.spent == 6 and counts.retried >= len(running)
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0
    records = load_records(out / "results.jsonl")
    assert len(records) == 2 and {r.n_trials for r in records} == {6}
    # both processes kept their search seconds in the study, and the records carry their sum
    from fusebench.search.clock import KEY_PREFIX, search_time

    assert len([k for k in study.user_attrs if k.startswith(KEY_PREFIX)]) == 2
    assert {r.search_seconds for r in records} == {search_time(study).seconds}
    assert all(r.search_seconds_complete for r in records)


def test_batched_member_adamw_equals_torch_adamw_per_member():
    """The stacked per-member AdamW follows each member's own torch.optim.AdamW (random grads, 20 steps)."""
    from fusebench.training.members import _MemberAdamW

    g = torch.Generator().manual_seed(0)
    lrs, wds = [1e-3, 5e-3, 1e-4], [1e-2, 1e-6, 3e-4]
    init = torch.randn(3, 4, 5, generator=g)
    stacked = init.clone().requires_grad_(True)
    opt = _MemberAdamW([stacked], lrs, wds)
    singles = [init[k].clone().requires_grad_(True) for k in range(3)]
    opts = [torch.optim.AdamW([p], lr=lr, weight_decay=wd) for p, lr, wd in zip(singles, lrs, wds)]
    for _ in range(20):
        grad = torch.randn(3, 4, 5, generator=g)
        stacked.grad = grad.clone()
        opt.step()
        for k, (p, o) in enumerate(zip(singles, opts)):
            p.grad = grad[k].clone()
            o.step()
    for k in range(3):
        torch.testing.assert_close(stacked[k].detach(), singles[k].detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_batched_search_of_singletons_equals_the_sequential_search(tmp_path, synthetic_bundle, monkeypatch):
    """Trials 0-2 of the toy search differ in hidden_dim, so a batch of 3 trains them one by one: the
    study must then be the sequential study, value for value (dropout on: the RNG is where it would be)."""
    from fusebench.cli import main
    from fusebench.search.storage import open_storage

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    values = {}
    for b in (1, 3):
        out = tmp_path / f"b{b}"
        assert main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "3", "--seeds", "1",
                     "--trial-batch", str(b), "--data-dir", str(data), "--out", str(out)]) == 0
        study = optuna.load_study(study_name="toy/concat", storage=open_storage(f"journal:///{out / 'optuna.journal'}"))
        values[b] = [(t.state, t.params, t.value, t.user_attrs.get("best_step")) for t in study.trials]
    assert values[1] == values[3]


@pytest.mark.slow
def test_worker_trains_the_studys_trial_batches(tmp_path, synthetic_bundle, monkeypatch):
    """`--trial-batch` is stored with the study; a `fusebench worker` asks and trains in the same batches."""
    from fusebench.cli import main
    from fusebench.search.storage import open_storage

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    url = f"journal:///{tmp_path / 'studies.journal'}"
    assert main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "6", "--trial-batch", "6",
                 "--data-dir", str(data), "--out", str(tmp_path / "run"), "--storage", url, "--prepare-only", "-q"]) == 0
    assert main(["worker", "--study", "toy/concat", "--storage", url, "--data-dir", str(data), "-q"]) == 0
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(url))
    assert study.user_attrs["fusebench"]["trial_batch"] == 6
    assert trial_counts(study, 6).spent == 6 and trials_batched(study) >= 2


ATTENTION = [n for n in NAMES if n in ("coattention", "early_transformer", "mbt", "mult")]


@pytest.mark.parametrize("name", ATTENTION)
def test_batched_attention_members_are_vectorised_not_looped(name):
    """fit_members runs attention in the math kernel, which vmap batches. With torch's fused kernels
    vmap looped over the members on the CPU ("no batching rule" warning) and failed outright on CUDA
    ("LSE is not correctly aligned", an H200), where every attention model then trained one member
    at a time (tests/test_gpu.py checks the CUDA side)."""
    assert len(ATTENTION) == 4
    build, train, val, _ = _setup(name)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_members([Member(build(k), s) for k, s in enumerate(SEEDS)], train, val, CFG, "accuracy")
    looped = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    assert not looped, f"{name}: {looped[0][:160]}"


def test_a_worker_counts_the_cap_on_its_own_devices_clock(synthetic_bundle, monkeypatch, tmp_path):
    """A study made by a GPU run counts wall seconds; a CPU worker joining it counts CPU seconds, and the
    study says so. Before, a worker took the owning run's clock: a GPU worker on a CPU run's study
    counted its CPU seconds, a fraction of the device time its trials took."""
    from fusebench.cli import main
    from fusebench.run.cell import STUDY_ATTR
    from fusebench.search.clock import CLOCKS_KEY, search_time
    from fusebench.search.storage import open_storage

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    url = f"journal:///{tmp_path / 'studies.journal'}"
    assert main(["run", "--datasets", "toy", "--strategies", "concat", "--trials", "2",
                 "--data-dir", str(data), "--out", str(tmp_path / "run"), "--storage", url, "--prepare-only", "-q"]) == 0
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(url))
    attrs = study.user_attrs[STUDY_ATTR]
    assert attrs["budget"]["cap_clock"] == "cpu"
    study.set_user_attr(STUDY_ATTR, {**attrs, "budget": {**attrs["budget"], "cap_clock": "wall"}})  # as a GPU run writes it
    study.set_user_attr(CLOCKS_KEY, ["wall"])  # and it searched a while on its GPU
    assert main(["worker", "--study", "toy/concat", "--storage", url, "--device", "cpu", "--data-dir", str(data), "-q"]) == 0
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(url))
    assert study.user_attrs[CLOCKS_KEY] == ["wall", "cpu"]
    assert search_time(study).clock == "wall+cpu"
