"""`fusebench calibrate`: the A/A experiment end to end on a generated dataset (real searches, real
training), its JSON, and the usage errors (exit 2) for requests that cannot be an A/A test."""

from __future__ import annotations

import json

import pytest

from fusebench.cli import main


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data


def test_calibrate_runs_two_independent_searched_arms_and_reports_rates(toy, tmp_path, capsys):
    out = tmp_path / "cal"
    code = main(["calibrate", "--dataset", "toy", "--strategy", "concat", "--size", "small", "--repeats", "1",
                 "--replicates", "2", "--trials", "2", "--seeds", "2", "--epochs", "2", "--data-dir", str(toy),
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_repeats"] == 1 and summary["alpha"] == 0.05
    assert 0.0 <= summary["rejection_rate"] <= 1.0 and 0.0 <= summary["ci95_coverage_of_zero"] <= 1.0
    for rep in summary["repeats"]:
        assert rep["p"] is not None and rep["p_one_search"] is not None
        lo, hi = rep["ci95"]
        assert lo <= rep["delta"] <= hi
    # every arm × replicate was its own search (own journal, distinct search seed)
    journals = sorted(out.glob("repeat*/arm*/replicate*/optuna.journal"))
    assert len(journals) == 1 * 2 * 2


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "concat", "--replicates", "1"], "--replicates must be >= 2"),
    (["--strategy", "majority"], "not searched"),
    (["--strategy", "unimodal:nope"], "makes no cell"),
])
def test_calibrate_refuses_what_cannot_be_an_aa_test(toy, tmp_path, capsys, extra, message):
    code = main(["calibrate", "--dataset", "toy", "--size", "small", "--repeats", "1", "--data-dir", str(toy),
                 "--out", str(tmp_path / "cal"), *extra])
    assert code == 2 and message in capsys.readouterr().err
