"""`forget_cells` on a generated run directory (records, studies, stored seeds; no training): a retrieval
task's dual encoder goes with its re-rankers, a re-ranker goes alone, a misspelt cell gets a "Did you
mean", and a study's replicate suffix maps back to its cell for any name."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusebench.core.errors import UsageError
from fusebench.run.forget import _base_of, forget_cells
from fusebench.search.storage import default_url, open_storage
from fusebench.search.study import replicate_study_name

RET = "flickr8k-retrieval"
CELLS = [(RET, "dual_encoder"), (RET, "rerank:concat"), (RET, "rerank:lmf"), ("flickr8k-itm", "concat"),
         ("other-retrieval", "rerank:concat")]


def _make_run(out: Path) -> None:
    """Two records and two replicate studies per cell of CELLS."""
    out.mkdir()
    lines = [json.dumps({"dataset": d, "strategy": s, "seed": k}) for d, s in CELLS for k in (0, 1)]
    (out / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    storage = open_storage(default_url(out), heartbeat=False)
    for d, s in CELLS:
        for r in (0, 1):
            optuna.create_study(study_name=replicate_study_name(f"{d}/{s}", r), storage=storage)


def _cells_left(out: Path) -> set[tuple[str, str]]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return {(r["dataset"], r["strategy"]) for r in rows}


def _studies_left(out: Path) -> set[str]:
    return {s.study_name for s in open_storage(default_url(out), heartbeat=False).get_all_studies()}


def test_forgetting_a_dual_encoder_forgets_the_rerankers_of_its_task(tmp_path: Path) -> None:
    """Before: the re-rankers' rows stayed, over a dual encoder the next run searched again."""
    out = tmp_path / "run"
    _make_run(out)
    done = forget_cells(out, [f"{RET}/dual_encoder"], default_url(out))
    assert [(f.cell, f.because_of, f.records) for f in done] == [
        (f"{RET}/dual_encoder", "", 2), (f"{RET}/rerank:concat", f"{RET}/dual_encoder", 2),
        (f"{RET}/rerank:lmf", f"{RET}/dual_encoder", 2)]
    assert done[1].studies == [f"{RET}/rerank:concat", f"{RET}/rerank:concat/r1"]
    assert _cells_left(out) == {("flickr8k-itm", "concat"), ("other-retrieval", "rerank:concat")}
    assert _studies_left(out) == {"flickr8k-itm/concat", "flickr8k-itm/concat/r1", "other-retrieval/rerank:concat",
                                  "other-retrieval/rerank:concat/r1"}


def test_a_reranker_is_forgotten_alone(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _make_run(out)
    done = forget_cells(out, [f"{RET}/rerank:lmf", f"{RET}/rerank:lmf"], default_url(out))
    assert [f.cell for f in done] == [f"{RET}/rerank:lmf"]
    assert _cells_left(out) == set(CELLS) - {(RET, "rerank:lmf")}


def test_a_misspelt_cell_is_refused_with_the_closest_names_and_nothing_changes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _make_run(out)
    before, studies = (out / "results.jsonl").read_bytes(), _studies_left(out)
    with pytest.raises(UsageError) as err:
        forget_cells(out, ["flickr8k-itm/concat", f"{RET}/rerank:lfm"], default_url(out))
    msg = str(err.value)
    assert f"no records or study of {RET}/rerank:lfm." in msg and f"Did you mean {RET}/rerank:lmf" in msg, msg
    assert (out / "results.jsonl").read_bytes() == before and _studies_left(out) == studies


def test_a_cell_with_a_study_and_no_record_is_known(tmp_path: Path) -> None:
    """A cell stopped mid-search has its study and no record yet: forget must still find it."""
    out = tmp_path / "run"
    _make_run(out)
    optuna.create_study(study_name="esc50/mult/r2", storage=open_storage(default_url(out), heartbeat=False))
    assert [f.studies for f in forget_cells(out, ["esc50/mult"], default_url(out))] == [["esc50/mult/r2"]]


names = st.text(st.sampled_from("abr0123:/+-_"), min_size=1, max_size=12)


@given(dataset=names.filter(lambda s: "/" not in s), strategy=names, r=st.integers(0, 30))
def test_a_replicate_study_maps_back_to_its_cell(dataset: str, strategy: str, r: int) -> None:
    cell = f"{dataset}/{strategy}"
    if _base_of(cell) != cell:  # a strategy whose own name ends in /r<N> cannot be told from a replicate
        return
    assert _base_of(replicate_study_name(cell, r)) == cell


def _running_trial(out: Path, study_name: str, pid: int) -> None:
    """A RUNNING trial of `study_name` owned, as the search writes it, by (this host, pid)."""
    import socket

    study = optuna.load_study(study_name=study_name, storage=open_storage(default_url(out), heartbeat=False))
    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", pid)


def test_a_study_with_a_live_processs_trial_is_not_forgotten_and_a_dead_ones_is(tmp_path: Path) -> None:
    """A worker outside the run directory's lock (one sharing the storage) may be running a trial of the
    cell: before, forget deleted the study under it."""
    import subprocess
    import sys

    out = tmp_path / "run"
    _make_run(out)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _running_trial(out, "flickr8k-itm/concat/r1", live.pid)
        before = (out / "results.jsonl").read_bytes()
        with pytest.raises(UsageError) as err:
            forget_cells(out, ["flickr8k-itm/concat"], default_url(out))
        assert "trials running in the studies to forget (flickr8k-itm/concat/r1: trial(s) 0)" in str(err.value)
        assert (out / "results.jsonl").read_bytes() == before and "flickr8k-itm/concat/r1" in _studies_left(out)
    finally:
        live.kill()
        live.wait()
    # the process is gone: its trial is a killed process's, and the cell can go
    assert [f.cell for f in forget_cells(out, ["flickr8k-itm/concat"], default_url(out))] == ["flickr8k-itm/concat"]


def test_a_cell_with_only_stored_seeds_is_known_and_an_odd_study_name_is_no_replicate(tmp_path: Path) -> None:
    """`majority`/`random` never search: stopped between seeds, a stored seed is all such a cell has (review
    of stop 30: refused as "no records or study"). A study named `.../r²` is not a replicate ("²".isdigit()
    is True and int("²") raised out of every forget of the run)."""
    from fusebench.run.seed_store import SeedStore

    out = tmp_path / "run"
    _make_run(out)
    store = SeedStore(out, "esc50", "majority")
    store.folder.mkdir(parents=True)
    for suffix in ("json", "parquet"):
        (store.folder / f"{store.stem}.r0.s0.{suffix}").write_bytes(b"{}")
    optuna.create_study(study_name="esc50/lmf/r²", storage=open_storage(default_url(out), heartbeat=False))
    assert _base_of("esc50/lmf/r²") == "esc50/lmf/r²" and _base_of("esc50/lmf/r12") == "esc50/lmf"
    done = forget_cells(out, ["esc50/majority"], default_url(out))
    assert [(f.cell, f.files) for f in done] == [("esc50/majority", ["1 stored seed(s)"])] and store.count() == 0
