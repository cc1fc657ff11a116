"""`fusebench run` lowers torch's intra-op threads while it trains cells; it must give them back
however the run ends, also when it raises (a library user who catches the error keeps using torch)."""

from __future__ import annotations

import logging

import optuna
import pytest
import torch

from fusebench.cli import main
from fusebench.core.errors import UsageError
from fusebench.run.cell import STUDY_ATTR
from fusebench.search.storage import default_url, open_storage


def _stale_study(out) -> None:
    """A study of the cell toy/concat made by another data revision: the run refuses it (exit 2)
    from inside the cell, after the dataset is encoded and the training threads are set."""
    out.mkdir(parents=True)
    study = optuna.create_study(study_name="toy/concat", storage=open_storage(default_url(out)), direction="maximize")
    study.set_user_attr(STUDY_ATTR, {"data_fingerprint": "another-revision"})


@pytest.mark.parametrize("entry", ["cli", "library"])
def test_threads_are_restored_when_a_run_raises_mid_dataset(synthetic_bundle, monkeypatch, tmp_path, entry, caplog):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("FUSEBENCH_TRAIN_THREADS", "1")
    caplog.set_level(logging.INFO, logger="fusebench")
    out = tmp_path / "run"
    _stale_study(out)
    torch.set_num_threads(2)  # the conftest fixture puts the session's value back after this test
    args = ["run", "--suite", "toy", "--strategies", "concat", "--seeds", "1", "--trials", "1",
            "--data-dir", str(data), "--out", str(out)]
    if entry == "cli":
        assert main(args) == 2
    else:  # the run layer's own entry point, as a library user calls it
        import dataclasses

        from fusebench.config import catalog
        from fusebench.run.runner import RunConfig, run

        suite = dataclasses.replace(catalog.get_suite("toy"), strategies=("concat",), seeds=1, trials=1)
        with pytest.raises(UsageError, match="data_fingerprint"):
            run(RunConfig(suite=suite, out=out, data_dir=str(data)))
    assert "ready in" in caplog.text  # the dataset was built and encoded: the failure came from the cell
    assert torch.get_num_threads() == 2
