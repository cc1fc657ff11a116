"""A study is one search over one search space. Its strategy's space (`search_space`, from the params
dataclass's field metadata) is stored with the study; a run resumed with code whose space differs is
refused, naming the field, before it asks a trial. Before, nothing compared them: a float range that
moved mixed two spaces' trials in one TPE model without a word, and a changed choice list (lmf's
`factor_dim` {4, 8, 16} → {8, 16, 32, 64}) failed each cell with optuna's "CategoricalDistribution does
not support dynamic value space" halfway through its search. A study stored before `search_space` was
kept resumes as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from fusebench.core import space
from fusebench.results.records import load_records
from fusebench.search.storage import default_url, open_storage
from tests.test_seed_store_resume import _args, stop_after_storing


def _stopped_run(synthetic_bundle, tmp_path: Path, monkeypatch) -> tuple[Path, list[str], object]:
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    save = stop_after_storing(monkeypatch, 1)
    from fusebench.cli import main

    main(_args(data, out, "concat", 1))
    assert [r.status for r in load_records(out / "results.jsonl")] == ["failed"]
    return out, _args(data, out, "concat", 1), save


@pytest.mark.slow
def test_a_study_resumed_with_another_search_space_is_refused_naming_the_field(
        synthetic_bundle, tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    from fusebench.cli import main
    from fusebench.run import seed_store

    out, args, save = _stopped_run(synthetic_bundle, tmp_path, monkeypatch)
    monkeypatch.setattr(seed_store.SeedStore, "save", save)
    real = space.search_space

    def widened(params_cls):  # the code of the resumed process searches hidden_dim over other widths
        described = real(params_cls)
        return {**described, "hidden_dim": {**described["hidden_dim"], "choices": [32, 64, 128, 256]}}

    monkeypatch.setattr(space, "search_space", widened)
    trials_before = len(optuna.load_study(study_name="toy/concat", storage=open_storage(default_url(out))).trials)
    caplog.clear()
    capsys.readouterr()
    rc = main(args)
    said = capsys.readouterr().err + caplog.text
    assert rc == 2, said[-2000:]
    assert "another search space" in said and "hidden_dim" in said and "256" in said, said[-2000:]
    assert "CategoricalDistribution" not in said
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(default_url(out)))
    assert len(study.trials) == trials_before  # refused before asking a trial
    assert not [r for r in load_records(out / "results.jsonl") if r.status == "ok"]


@pytest.mark.slow
def test_a_study_stored_before_search_space_was_kept_resumes(synthetic_bundle, tmp_path: Path, monkeypatch) -> None:
    from fusebench.cli import main
    from fusebench.run import seed_store

    out, args, save = _stopped_run(synthetic_bundle, tmp_path, monkeypatch)
    monkeypatch.setattr(seed_store.SeedStore, "save", save)
    study = optuna.load_study(study_name="toy/concat", storage=open_storage(default_url(out)))
    attrs = dict(study.user_attrs["fusebench"])
    assert attrs.pop("search_space") == json.loads(json.dumps(space.search_space(type(_concat_params()))))
    study.set_user_attr("fusebench", attrs)  # as a study of the code before
    assert main(args) == 0
    assert len([r for r in load_records(out / "results.jsonl") if r.status == "ok"]) > 0


def _concat_params():
    from fusebench.strategies.base import STRATEGIES

    return STRATEGIES.get("concat").params()


def test_space_changes_names_each_searched_field_that_moved_and_ignores_defaults() -> None:
    from fusebench.strategies.base import STRATEGIES

    lmf = space.search_space(STRATEGIES.get("lmf").params)
    stored = json.loads(json.dumps(lmf))  # as the journal gives it back: lists, not tuples
    assert space.space_changes(stored, lmf) == []
    assert space.space_changes({**stored, "rank": {**stored["rank"], "default": 8}}, lmf) == []
    old = {**stored, "factor_dim": {**stored["factor_dim"], "choices": [4, 8, 16]}}
    del old["rank"]
    assert space.space_changes(old, lmf) == [
        'factor_dim: {"type": "categorical", "choices": [4, 8, 16]} → {"type": "categorical", "choices": [8, 16, 32, 64]}',
        'rank: null → {"type": "categorical", "choices": [1, 4, 8, 16]}']
