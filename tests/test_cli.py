"""The command line's contract: exit statuses and messages for bad input, listing as JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusebench.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_list_strategies_json_carries_contract_fields(capsys):
    assert main(["list", "strategies", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert items, "no strategies registered"
    for it in items:
        assert {"name", "family", "modalities", "citation", "search_space"} <= set(it)
        assert it["citation"]
        if it["trainable"]:
            assert {"lr", "weight_decay", "dropout", "hidden_dim"} <= set(it["search_space"])
    reranks = {it["name"] for it in items if it["reranks"]}  # the strategies a retrieval task shows as rerank:<name>
    assert {"concat", "mfb", "coattention", "logit_mean"} <= reranks and not {"unimodal", "majority", "random"} & reranks
    assert main(["list", "strategies"]) == 0
    lines = {line.split()[0]: line.split()[3] for line in capsys.readouterr().out.splitlines()}
    assert lines["concat"] == "rerank" and lines["unimodal"] == "-"


def test_list_datasets_and_suites(capsys):
    assert main(["list", "datasets", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"flickr8k-itm", "imdb", "avmnist", "esc50"} <= names
    assert main(["list", "suites"]) == 0
    assert "smoke" in capsys.readouterr().out


def test_unknown_strategy_exits_2_with_suggestion_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fusebench", "run", "--datasets", "imdb", "--strategies", "conact", "--out", "/nonexistent"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert "unknown strategy 'conact'" in proc.stderr and "Did you mean 'concat'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_retrieval_row_names_are_not_selections_and_say_what_to_select(capsys):
    """`rerank:concat` once answered "unknown strategy 'rerank'. Did you mean 'random'?"."""
    assert main(["run", "--datasets", "flickr8k-retrieval", "--strategies", "rerank:concat", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "select the re-ranker by its plain name ('concat')" in err and "random" not in err
    assert main(["run", "--datasets", "flickr8k-retrieval", "--strategies", "rerank", "--out", "x"]) == 2
    assert "select re-rankers by their plain names (e.g. concat)" in capsys.readouterr().err
    assert main(["run", "--datasets", "flickr8k-retrieval", "--strategies", "concat,dual_encoder", "--out", "x"]) == 2
    assert "the dual encoder is not selected; it runs first on every retrieval task" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    # the name after rerank: is checked before it is recommended (the reviewer's repros)
    (["run", "--datasets", "flickr8k-retrieval", "--strategies", "rerank:bogus"], "'bogus' is not one"),
    (["run", "--datasets", "flickr8k-retrieval", "--strategies", "rerank:unimodal"], "'unimodal' is not one"),
    (["run", "--datasets", "flickr8k-retrieval", "--strategies", "rerank:dual_encoder"], "'dual_encoder' is not one"),
    (["run", "--datasets", "flickr8k-retrieval", "--strategies", "dual_encoder:image+text"],
     "the dual encoder is not selected"),
    (["run", "--datasets", "esc50", "--strategies", "concat+ft:full"], "select 'concat' with --encoders full"),
    (["run", "--datasets", "esc50", "--strategies", "concat+ft:last:2"], "select 'concat' with --encoders last:2"),
    # the other commands that take a strategy name
    (["throughput", "--strategies", "rerank:concat"], "select the re-ranker by its plain name ('concat')"),
    (["calibrate", "--dataset", "esc50", "--strategy", "rerank:concat", "--repeats", "1"],
     "strategy 'rerank:concat': select the re-ranker"),
])
def test_a_row_name_that_is_not_a_selection_says_what_to_give(argv, says, capsys, tmp_path):
    out = ["--out", str(tmp_path / "o")] if argv[0] == "run" else []
    assert main(argv + out) == 2
    err = capsys.readouterr().err
    assert says in err and "Did you mean" not in err, err


def test_unknown_dataset_and_suite_exit_2(capsys):
    assert main(["run", "--datasets", "imbd", "--strategies", "concat", "--out", "x"]) == 2
    assert "Did you mean 'imdb'?" in capsys.readouterr().err
    assert main(["run", "--suite", "smok"]) == 2
    assert "Did you mean 'smoke'?" in capsys.readouterr().err


def test_missing_data_root_exits_2_and_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEBENCH_DATA", str(tmp_path / "nope"))
    assert main(["data", "check"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "FUSEBENCH_DATA" in err
    assert main(["run", "--suite", "tiny", "--data-dir", str(tmp_path / "also-nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_no_data_root_anywhere_lists_candidates(monkeypatch):
    from fusebench.core import paths
    from fusebench.core.errors import DataError

    monkeypatch.delenv("FUSEBENCH_DATA", raising=False)
    monkeypatch.setattr(paths, "checkout_root", lambda: Path("/nonexistent/repo"))
    monkeypatch.setattr(paths.Path, "home", staticmethod(lambda: Path("/nonexistent/home")))
    with pytest.raises(DataError) as err:
        paths.resolve_data_root()
    msg = str(err.value)
    assert "/nonexistent/shared/data" in msg and "--data-dir" in msg and "FUSEBENCH_DATA" in msg


def test_bad_yaml_key_exits_2_naming_file_and_key(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "cfg"
    (cfg / "suites").mkdir(parents=True)
    (cfg / "broken.yaml").write_text("name: broken\ntask: classification\nbuildr: parquet\n")
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    assert main(["run", "--datasets", "broken", "--strategies", "concat", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg / 'broken.yaml'}:3" in err and "buildr" in err and "Did you mean 'builder'?" in err
