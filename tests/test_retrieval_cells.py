"""Retrieval cells on generated features (no bundle, no encoders): search replicates, throughput
and hard-negative re-rankers through `RetrievalRun`, with real optuna studies."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from fusebench.config import catalog
from fusebench.data.builders import TaskTables
from fusebench.features.extract import SplitData, TaskData
from fusebench.measure.timing import TimingConfig
from fusebench.run.cell import CellContext
from fusebench.run.retrieval_cell import RetrievalRun, expand_retrieval_cells
from fusebench.search.study import Budget
from fusebench.training.loop import TrainConfig


def _task(n_images: dict[str, int]) -> tuple[TaskData, TaskTables]:
    """Captions are a noisy linear image of their image's features (5 per image), as the planted test."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 12, generator=g)
    splits, tables = {}, {}
    for split, n in n_images.items():
        img = torch.randn(n, 16, generator=g)
        groups = np.repeat(np.arange(n), 5)
        txt = img[groups] @ mix + 0.8 * torch.randn(5 * n, 12, generator=g)
        ids = [f"{split}{i}.jpg" for i in groups]
        splits[split] = SplitData({"image": img[groups], "text": txt},
                                  {"image": img[groups, None], "text": txt[:, None]},
                                  torch.ones(5 * n, dtype=torch.long), tuple(ids))
        tables[split] = datasets.Dataset.from_dict({"group": groups.tolist(), "image_id": ids})
    cfg = catalog.get_dataset("flickr8k-retrieval")
    data = TaskData(cfg, splits, "f" * 16, {"image": "gen", "text": "gen"})
    return data, TaskTables(tables, "t" * 16, {})


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_retrieval_cells_run_r_replicates_record_throughput_and_mine_hard_negatives(tmp_path: Path, one_thread,
                                                                                    negatives: str) -> None:
    data, tables = _task({"train": 80, "val": 30, "test": 30})
    ctx = CellContext(budget=Budget(trials=1, timeout_s=60, seeds=2, replicates=2),
                      train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                      device=torch.device("cpu"), storage=f"sqlite:///{tmp_path / 'o.db'}", out_dir=tmp_path,
                      rerank_k=5, rerank_negatives=negatives)
    cells = expand_retrieval_cells("flickr8k-retrieval", ["concat"])
    out = dict(RetrievalRun(data, tables, ctx).execute(cells))
    for cell, records in out.items():
        assert not isinstance(records, BaseException), records
        assert sorted((r.replicate, r.seed) for r in records) == [(0, 1000), (0, 1001), (1, 1000), (1, 1001)]
        assert len({r.sampler["seed"] for r in records}) == 2  # each replicate its own sampler seed
        tp = records[0].throughput
        assert tp is not None and tp.train_samples_per_s > 0 and tp.infer_samples_per_s > 0 and tp.repetitions == 3
        preds = pd.read_parquet(tmp_path / "predictions" / "flickr8k-retrieval" / f"{cell.strategy.replace(':', '__')}.parquet")
        assert sorted(set(preds.replicate)) == [0, 1] and len(preds) == 4 * (30 + 150)
    rerank = next(rs for c, rs in out.items() if c.strategy == "rerank:concat")
    assert {r.params["rerank_negatives"] for r in rerank} == {negatives}  # type: ignore[union-attr]
    dual = next(rs for c, rs in out.items() if c.strategy == "dual_encoder")
    # replicate r of the re-ranker re-ranks the dual encoders of dual-encoder replicate r
    for r in (0, 1):
        want = next(x.params for x in dual if x.replicate == r)  # type: ignore[union-attr]
        assert all(x.params["dual_encoder"] == want for x in rerank if x.replicate == r)  # type: ignore[union-attr]


def test_rerank_negatives_is_checked_in_suites_and_on_the_command_line(tmp_path: Path, capsys) -> None:
    from fusebench.cli import main
    from fusebench.config.loader import SuiteConfig

    assert dataclasses.replace(SuiteConfig(name="s", description="", datasets=("x",)), rerank_negatives="hard")
    suites = tmp_path / "cfg" / "suites"
    suites.mkdir(parents=True)
    (suites / "bad.yaml").write_text("name: bad\ndescription: x\ndatasets: [flickr8k-retrieval]\nrerank_negatives: hardest\n")
    assert main(["--config-dir", str(suites.parent), "run", "--suite", "bad", "--out", str(tmp_path / "r")]) == 2
    assert "rerank_negatives" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--datasets", "flickr8k-retrieval", "--strategies", "concat", "--rerank-negatives", "hardest"])
    assert exc.value.code == 2


def test_retrieval_records_carry_the_search_budget_and_the_leaderboard_shows_it(tmp_path: Path, one_thread) -> None:
    """Retrieval records carry the trial counts classification records carry (spent, budget, complete,
    pruned, failed, retried, cap bound), equal to their studies' own counts; the leaderboard's main
    table and its retrieval detail print them the same way, summed over the search replicates."""
    from fusebench.reports.leaderboard import leaderboard, trials_text
    from fusebench.reports.retrieval import retrieval_markdown
    from fusebench.search.study import open_study, replicate_study_name, trial_counts

    data, tables = _task({"train": 60, "val": 20, "test": 20})
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    ctx = CellContext(budget=Budget(trials=3, timeout_s=120, seeds=1, replicates=2),
                      train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                      device=torch.device("cpu"), storage=storage, out_dir=tmp_path, rerank_k=5)
    out = dict(RetrievalRun(data, tables, ctx).execute(expand_retrieval_cells("flickr8k-retrieval", ["concat"])))
    records = [r for rs in out.values() for r in rs]  # type: ignore[union-attr]
    assert {r.strategy for r in records} == {"dual_encoder", "rerank:concat"}
    for r in records:
        study = open_study(replicate_study_name(f"flickr8k-retrieval/{r.strategy}", r.replicate),
                           storage, 0, create=False)
        want = trial_counts(study, 3)
        assert (r.n_trials, r.n_trials_budget, r.n_trials_complete, r.n_trials_pruned, r.n_trials_failed,
                r.n_trials_retried) == (want.spent, 3, want.complete, want.pruned, want.failed, want.retried)
        assert r.n_trials == 3 and r.n_trials_complete + r.n_trials_pruned == 3 and r.cap_bound is False
    board = leaderboard(records)
    detail = retrieval_markdown(records)
    for _, row in board.iterrows():
        assert row.trials_budget == 6  # 3 per search replicate, 2 replicates
        cell = trials_text(row)
        assert cell.startswith(f"{int(row.trials_complete)}/6 (") and "pruned" in cell and "failed" in cell
        line = next(x for x in detail.splitlines() if x.startswith(f"| `{row.strategy}` |"))
        assert f"| {cell} |" in line, (cell, line)


def test_retrieval_records_carry_their_seconds_so_timing_status_counts_the_whole_cell(tmp_path: Path,
                                                                                      one_thread) -> None:
    """Each retrieval record has its seed's evaluation seconds and the cell's one throughput timing, as
    classification records do; the status's process-seconds of a cell (searches + every record's
    phases) then account for the cell's wall time. Before, retrieval records had no phase seconds and
    `timing status` counted only the searches (on the standard run: 49 of the dual encoder's 95 s)."""
    import time

    from fusebench.run.status import _cell_seconds

    data, tables = _task({"train": 60, "val": 20, "test": 20})
    ctx = CellContext(budget=Budget(trials=2, timeout_s=120, seeds=2, replicates=2),
                      train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                      device=torch.device("cpu"), storage=f"sqlite:///{tmp_path / 'o.db'}", out_dir=tmp_path,
                      rerank_k=5)
    outcomes = RetrievalRun(data, tables, ctx).execute(expand_retrieval_cells("flickr8k-retrieval", ["concat"]))
    t0 = time.perf_counter()
    for _cell, records in outcomes:
        wall = time.perf_counter() - t0
        assert not isinstance(records, BaseException), records
        assert all(r.phase_seconds["evaluation"] > 0 for r in records)
        assert [r.phase_seconds["throughput"] > 0 for r in records] == [True, False, False, False]  # once per cell
        counted = _cell_seconds(records)
        assert 0.5 * wall <= counted <= wall, (counted, wall)  # the rest: opening studies, writing predictions
        t0 = time.perf_counter()


def test_a_retrieval_cell_past_its_deadline_starts_no_evaluation_seed(tmp_path: Path, one_thread, monkeypatch) -> None:
    """--stop-after: the deadline passes as replicate 0's search ends; no evaluation seed may start after it
    (before the cell kept its seeds on disk, seeds trained then were thrown away when the next replicate's
    search stopped the cell; tests/test_retrieval_seed_store.py checks that they are kept now)."""

    import fusebench.run.retrieval_cell as rc
    from fusebench.core import deadline

    monkeypatch.delenv(deadline.ENV, raising=False)
    data, tables = _task({"train": 80, "val": 30, "test": 30})
    ctx = CellContext(budget=Budget(trials=1, timeout_s=60, seeds=2, replicates=2),
                      train=TrainConfig(epochs=2, patience=2, batch_size=64), timing=TimingConfig(),
                      device=torch.device("cpu"), storage=f"sqlite:///{tmp_path / 'o.db'}", out_dir=tmp_path)
    real_search, real_train = rc._search_dual, rc.train_dual_encoder
    late: list[int] = []

    def search_then_deadline(*args, **kwargs):
        out = real_search(*args, **kwargs)
        monkeypatch.setenv(deadline.ENV, "0")  # recorded, so restored after the test (a bare os.environ write leaked)
        return out

    def train(*args, **kwargs):
        if deadline.passed():
            late.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(rc, "_search_dual", search_then_deadline)
    monkeypatch.setattr(rc, "train_dual_encoder", train)
    cells = [c for c in expand_retrieval_cells("flickr8k-retrieval", ["concat"]) if c.info is None]
    with pytest.raises(deadline.StopRequested):
        dict(RetrievalRun(data, tables, ctx).execute(cells))
    assert late == []  # they trained past the deadline, their records then lost (a check before each seed since)


def test_selections_that_do_not_rerank_are_named_once(caplog) -> None:
    """`--strategies unimodal,majority,concat:image` on a retrieval task ran the dual encoder alone, silently."""
    with caplog.at_level(logging.INFO, logger="fusebench.run.retrieval_cell"):
        cells = expand_retrieval_cells("flickr8k-retrieval", ["unimodal", "majority", "concat:image", "gmu:image+text", "concat"])
    assert [c.strategy for c in cells] == ["dual_encoder", "rerank:gmu", "rerank:concat"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("flickr8k-retrieval: no rows for unimodal, majority, concat:image:"), said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fusebench.run.retrieval_cell"):
        expand_retrieval_cells("flickr8k-retrieval", ["concat", "mfb"])
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="fusebench.run.retrieval_cell"):
        twice = expand_retrieval_cells("flickr8k-retrieval", ["concat", "concat:image+text", "concat:text+image"])
    assert [c.strategy for c in twice] == ["dual_encoder", "rerank:concat"]  # one cell: it ran three times into one study
    assert not caplog.records  # a second name of a planned row is not "no rows"
