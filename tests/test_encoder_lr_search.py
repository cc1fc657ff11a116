"""Fine-tuning modes search the encoder's learning rate (log-uniform `ENCODER_LR_SPACE`); frozen
cells' search space is unchanged. A real (tiny, generated) run: the toy bundle's `hf:` tiny BERT view
fine-tuned with `last:1` next to the frozen row, real optuna studies."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fusebench.core import space
from fusebench.core.encmode import ENCODER_LR_PARAM, ENCODER_LR_SPACE, EncoderMode, FineTuneSettings
from fusebench.strategies import STRATEGIES
from fusebench.training.finetune import model as ft_model
from fusebench.training.finetune.setup import CellSetup


def _history(out, strategy: str) -> pd.DataFrame:
    df = pd.read_csv(out / "history" / "toy" / f"{strategy.replace(':', '__')}.csv")
    df["params"] = df["params"].map(json.loads)
    return df


@pytest.mark.slow
def test_encoder_lr_is_searched_in_fine_tuning_and_recorded(tmp_path, synthetic_bundle, monkeypatch):
    from fusebench.cli import main
    from fusebench.results.records import load_records

    used: list[float] = []  # the encoder rate every FineTuneModel was really built with
    real_init = ft_model.FineTuneModel.__init__

    def spy(self, fusion, towers, encoder_lr):
        used.append(encoder_lr)
        real_init(self, fusion, towers, encoder_lr)

    monkeypatch.setattr(ft_model.FineTuneModel, "__init__", spy)
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(["run", "--datasets", "toy", "--strategies", "concat:lexical+neural", "--encoders", "frozen,last:1",
                 "--trials", "2", "--seeds", "1", "--data-dir", str(data), "--out", str(out)]) == 0
    records = load_records(out / "results.jsonl")
    frozen = [r for r in records if r.encoder_mode == "frozen"]
    tuned = [r for r in records if r.encoder_mode == "last:1"]
    assert frozen and tuned
    strategy_keys = set(space.search_space(STRATEGIES.get("concat").params))

    # frozen: the strategy's search space only, in the trials and in the records
    frozen_trials = _history(out, frozen[0].strategy)
    assert all(set(p) == strategy_keys for p in frozen_trials["params"])
    assert all(ENCODER_LR_PARAM not in r.params for r in frozen)

    # fine-tuned: every trial also drew an encoder rate inside the declared range, and they differ
    tuned_trials = _history(out, tuned[0].strategy)
    rates = [p[ENCODER_LR_PARAM] for p in tuned_trials["params"]]
    assert all(set(p) == strategy_keys | {ENCODER_LR_PARAM} for p in tuned_trials["params"])
    assert len(rates) == 2 and len(set(rates)) == 2 and all(ENCODER_LR_SPACE.contains(v) for v in rates)

    # the records carry the best trial's rate, and the evaluation seeds trained with it
    best = tuned_trials.loc[tuned_trials["value"].idxmax(), "params"]
    assert [r.params[ENCODER_LR_PARAM] for r in tuned] == pytest.approx([best[ENCODER_LR_PARAM]] * len(tuned))
    assert used[:2] == pytest.approx(rates)  # the search's models, one per trial, in trial order
    assert used[2:] == pytest.approx([best[ENCODER_LR_PARAM]])  # the evaluation seed


def test_split_params_separates_the_encoder_rate():
    settings = FineTuneSettings(encoder_lr=3e-5)
    frozen = CellSetup(None, ("a",), "pooled", EncoderMode(), settings, None)  # type: ignore[arg-type]
    assert frozen.split_params({"lr": 1e-3}) == ({"lr": 1e-3}, None)
    assert frozen.split_params(None) == (None, None)
    assert ENCODER_LR_SPACE.low < ENCODER_LR_SPACE.high and ENCODER_LR_SPACE.log
