"""The report of a run in progress: statistics over a task's finished cells, marked provisional
(bench/results/provisional.py), and no claim from a test that was not made (reports/leaderboard.py,
reports/retrieval.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fusebench.results.provisional import provisional_stats
from fusebench.results.records import Record, load_records, write_records

STRATEGIES = "concat,logit_mean,unimodal"


def _strip(records: list[Record]) -> list[Record]:
    return [dataclasses.replace(r, stats={}) for r in records]


@pytest.fixture()
def finished_run(synthetic_bundle, tmp_path, monkeypatch) -> Path:
    """A finished toy run with two search replicates (so that the paired tests are made)."""
    from fusebench.cli import main

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    out = tmp_path / "run"
    assert main(["run", "--datasets", "toy", "--strategies", STRATEGIES, "--size", "small", "--trials", "2",
                 "--seeds", "2", "--replicates", "2", "--epochs", "2", "--data-dir", str(data), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_provisional_statistics_of_every_cell_are_the_runners_and_of_finished_cells_only(finished_run: Path):
    from fusebench.reports.leaderboard import leaderboard, task_verdict
    from fusebench.reports.ranking import rank

    out = finished_run
    records = load_records(out / "results.jsonl")
    planned = len(json.loads((out / "run.json").read_text())["plan"]["toy"])
    assert all(r.stats for r in records) and planned == len({r.strategy for r in records})

    # the same cells, statistics stripped: the report computes exactly the runner's, and says how many cells
    again = provisional_stats(_strip(records), out)
    for before, after in zip(records, again):
        assert after.stats == {**before.stats, "provisional": f"{planned} of {planned} cells done"}
    assert provisional_stats(records, out) == records  # the runner's statistics are kept as they are

    # logit_mean not run yet, concat one seed short (a cell resumed later): statistics over the unimodal cells
    concat_seed = next(r for r in records if r.strategy == "concat")
    partial = [r for r in _strip(records) if r.strategy != "logit_mean"
               and (r.strategy, r.replicate, r.seed) != (concat_seed.strategy, concat_seed.replicate, concat_seed.seed)]
    got = provisional_stats(partial, out)
    with_stats = {r.strategy for r in got if r.stats}
    assert with_stats == {r.strategy for r in records if r.family == "unimodal"}
    assert {r.stats["provisional"] for r in got if r.stats} == {f"{len(with_stats)} of {planned} cells done"}
    board = leaderboard(got)
    concat = board[board.strategy == "concat"].iloc[0]
    assert concat.beats_best_unimodal is None  # not tested: never "beats" on a higher mean beside tested rows
    ranked = set(rank(board).average_rank.index)  # one seed short: not a finished cell, so not ranked on its seeds
    assert "concat" not in ranked and ranked == {"unimodal (best)"}
    assert task_verdict(board).startswith(f"Provisional ({len(with_stats)} of {planned} cells done): the statistics "
                                          "are over the finished cells only; the best unimodal baseline")


@pytest.mark.slow
def test_report_of_a_run_in_progress_is_provisional_and_leaves_its_records_alone(finished_run: Path):
    from fusebench.cli import main

    out = finished_run
    records = load_records(out / "results.jsonl")
    write_records(out / "results.jsonl", _strip([r for r in records if r.strategy != "logit_mean"]))
    before = (out / "results.jsonl").read_bytes()
    assert main(["report", str(out), "--html", "-q"]) == 0
    assert (out / "results.jsonl").read_bytes() == before
    md, html = (out / "leaderboard.md").read_text(), (out / "report.html").read_text()
    planned = len(json.loads((out / "run.json").read_text())["plan"]["toy"])
    assert f"**Verdict.** Provisional ({planned - 1} of {planned} cells done)" in md
    assert f"Provisional ({planned - 1} of {planned} cells done)" in html
    row = next(line for line in md.splitlines() if line.startswith("| 1 | `concat`") or "| `concat` | early |" in line)
    assert row.split(" | ")[4].startswith("[")  # its bootstrap interval, not a t-interval over seeds (± x)


def test_without_a_protocol_in_run_json_nothing_is_computed(tmp_path: Path):
    (tmp_path / "run.json").write_text(json.dumps({"suite": "old"}))
    records = [Record(dataset="d", task="classification", strategy="concat", family="early", modalities=["a"],
                      seed=1000, status="ok", main_metric=0.5)]
    assert provisional_stats(records, tmp_path) == records


def test_retrieval_records_without_statistics_claim_no_test():
    """The published standard run said "no fusion re-ranker beats the dual encoder alone (2 tried; paired
    bootstrap …, p < 0.05)" and "no" in every row while its records held no test at all."""
    from fusebench.reports.retrieval import retrieval_markdown

    records = [Record(dataset="ret", task="retrieval", strategy=s, family=f, modalities=["image", "text"], seed=seed,
                      status="ok", main_metric=m + seed % 2, metrics={"rsum": m + seed % 2})
               for s, f, m in (("dual_encoder", "baseline", 230.0), ("rerank:concat", "early", 200.0))
               for seed in (1000, 1001)]
    text = retrieval_markdown(records)
    assert "not tested against the dual encoder alone (1 re-ranker(s); these records carry no statistics)" in text
    row = next(line for line in text.splitlines() if line.startswith("| `rerank:concat`"))
    assert row.split(" | ")[5] == "–" and "no fusion re-ranker beats" not in text
