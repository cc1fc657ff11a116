"""A retrieval task in the leaderboard and the HTML report: its verdict compares each re-ranker with the dual
encoder alone, the report carries the retrieval detail table, the dual encoder is on the Pareto front, and
the cross-task ranking counts a retrieval task (`rerank:<name>` as `<name>`, the dual encoder as the entry
without fusion), marked provisional while a task is in progress. On records generated here.

Before this, the standard run's report said for Flickr8k retrieval "No fusion-vs-unimodal comparison on
this task (it needs both a unimodal and a fusion row)" above nine tested re-rankers, the HTML had no Δ or
p against the dual encoder anywhere, the Pareto plot left out the dual encoder (rank 1, and the fastest),
and a run with a retrieval task had no overall ranking at all."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.core.retrieval_math import scores_from_ranks
from fusebench.reports.html import write_report
from fusebench.reports.leaderboard import leaderboard, to_markdown, write_leaderboard
from fusebench.reports.pareto import pareto_table
from fusebench.reports.ranking import rank
from fusebench.reports.verdicts import task_verdict
from fusebench.results.records import Record, Throughput, write_records
from fusebench.results.retrieval_stats import attach_retrieval_stats, prediction_path

N_IMAGES = 40
SEEDS = (1000, 1001, 1002)


def _frame(i2t: np.ndarray, t2i: np.ndarray) -> pd.DataFrame:
    caption_image = np.repeat(np.arange(N_IMAGES), 5)
    parts = []
    for s in SEEDS:
        parts.append(pd.DataFrame({"seed": s, "direction": "i2t", "query": np.arange(N_IMAGES), "rank": i2t,
                                   "cluster": [f"img{i}" for i in range(N_IMAGES)]}))
        parts.append(pd.DataFrame({"seed": s, "direction": "t2i", "query": np.arange(5 * N_IMAGES), "rank": t2i,
                                   "cluster": [f"img{i}" for i in caption_image]}))
    return pd.concat(parts)


def _retrieval_records(run_dir: Path) -> list[Record]:
    """A dual encoder, a re-ranker that ranks every query first (beats it) and one that ranks worse."""
    rng = np.random.default_rng(3)
    base = (rng.integers(1, 20, N_IMAGES), rng.integers(1, 20, 5 * N_IMAGES))
    frames = {("dual_encoder", "baseline", 2e4): base,
              ("rerank:concat", "early", 7e3): (np.ones(N_IMAGES, int), np.ones(5 * N_IMAGES, int)),
              ("rerank:logit_mean", "late", 9e3): (base[0] + 30, base[1] + 30)}
    records = []
    for (name, family, speed), (i2t, t2i) in frames.items():
        frame = _frame(i2t, t2i)
        path = prediction_path(run_dir, "ret", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)
        sc = scores_from_ranks(i2t, t2i)
        for seed in SEEDS:
            records.append(Record(
                dataset="ret", task="retrieval", strategy=name, family=family, modalities=["image", "text"], seed=seed,
                status="ok", metrics=sc.as_metrics(), main_metric_name="rsum", main_metric=sc.rsum,
                throughput=Throughput(1e3, speed, 1e2, 0.5, 0.9, 100.0, "cpu_peak_rss", 256, 30), params_count=1000))
    return attach_retrieval_stats(records, run_dir, "ret")


def _classification_records() -> list[Record]:
    strategies = {"concat": ("early", 0.70), "logit_mean": ("late", 0.65), "unimodal:a": ("unimodal", 0.60)}
    return [Record(dataset="cls", task="classification", strategy=name, family=family, modalities=["a", "b"], seed=seed,
                   status="ok", metrics={"accuracy": m}, main_metric_name="accuracy", main_metric=m + 0.001 * i)
            for name, (family, m) in strategies.items() for i, seed in enumerate(SEEDS)]


def test_the_verdict_of_a_retrieval_task_compares_each_reranker_with_the_dual_encoder(tmp_path: Path):
    verdict = task_verdict(leaderboard(_retrieval_records(tmp_path)))
    assert "No fusion-vs-unimodal comparison" not in verdict
    assert "1 of 2 fusion re-rankers beat the dual encoder alone (p < 0.05): `rerank:concat` (Δ = +" in verdict
    assert "`rerank:logit_mean`" not in verdict.split("beat the dual encoder alone")[1]


def test_the_report_has_the_retrieval_detail_and_the_dual_encoder_on_the_front(tmp_path: Path):
    records = _retrieval_records(tmp_path)
    write_records(tmp_path / "results.jsonl", records)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    write_leaderboard(records, tmp_path)
    pareto = pareto_table(leaderboard(records), records)
    assert "dual_encoder" in set(pareto.strategy)  # rank 1 and the fastest: the whole front
    assert pareto.set_index("strategy").on_pareto_front.to_dict() == {
        "dual_encoder": True, "rerank:concat": True, "rerank:logit_mean": False}
    text = write_report(tmp_path).read_text()
    detail = text.split("Retrieval detail: each re-ranker against the dual encoder alone", 1)[1]
    row = detail.split("<code>rerank:concat</code>", 1)[1].split("</tr>", 1)[0]
    assert "&lt;0.001" in row and "<span class=yes>yes</span>" in row  # its p and "beats" against the dual encoder
    main_table = text.split("id='ret'", 1)[1].split("Retrieval detail", 1)[0]
    assert "Δ vs best unimodal" not in main_table.split("<p class=note>", 1)[0]  # no empty comparison columns
    assert "1 of 2 fusion re-rankers beat the dual encoder alone" in text


def test_a_retrieval_task_enters_the_ranking_and_a_task_in_progress_is_named(tmp_path: Path):
    records = _retrieval_records(tmp_path) + _classification_records()
    ranking = rank(leaderboard(records))
    assert ranking.n_tasks == 2 and set(ranking.average_rank.index) == {"concat", "logit_mean", "unimodal (best)"}
    assert ranking.average_rank["concat"] == 1.0  # best on both tasks
    assert not ranking.sentence().startswith("Provisional")
    board = leaderboard(records).assign(provisional=lambda b: np.where(b.dataset == "ret", "3 of 5 cells done", ""))
    assert rank(board).sentence().startswith("Provisional (ret: 3 of 5 cells done): over the finished cells of that task")


def test_a_retrieval_task_with_its_dual_encoder_alone_does_not_cut_the_ranking(tmp_path: Path):
    """The dual encoder runs first: until a re-ranker finishes, its task has one entry, which cut the whole
    run's ranking down to `unimodal (best)` alone (the reviewer's repro)."""
    records = [r for r in _retrieval_records(tmp_path) if r.strategy == "dual_encoder"] + _classification_records()
    assert set(rank(leaderboard(records)).average_rank.index) == {"concat", "logit_mean", "unimodal (best)"}


def test_a_failed_reranker_says_failed_in_the_report_and_a_run_of_failed_cells_still_reports(tmp_path: Path):
    records = _retrieval_records(tmp_path)
    records = [r if r.strategy != "rerank:logit_mean" else dataclasses.replace(r, status="failed", error="boom")
               for r in records]
    write_records(tmp_path / "results.jsonl", records)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    write_leaderboard(records, tmp_path)
    text = write_report(tmp_path).read_text()
    row = text.split("<code>rerank:logit_mean</code>", 1)[1].split("</tr>", 1)[0]
    assert row.endswith("<td class=l>failed</td>")
    only_failed = [r for r in records if r.status == "failed"]
    assert pareto_table(leaderboard(only_failed), only_failed).empty  # was a KeyError: an empty row mask picked columns


def test_the_markdown_table_of_a_retrieval_task_drops_the_unimodal_columns_and_prints_rsum_to_one_decimal(tmp_path: Path):
    """leaderboard.md kept four empty vs-unimodal columns (and an empty p vs logit_mean) on a retrieval task and
    printed rsum as 230.9453, while the HTML report had dropped them and the detail table printed 230.9."""
    records = _retrieval_records(tmp_path)
    records = [r if r.strategy != "rerank:logit_mean" else dataclasses.replace(r, status="failed", error="boom")
               for r in records]
    records += _classification_records()
    write_records(tmp_path / "results.jsonl", records)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    write_leaderboard(records, tmp_path)
    text = (tmp_path / "leaderboard.md").read_text()
    ret = text.split("## ret — rsum", 1)[1].split("\n## ", 1)[0]
    head = next(line for line in ret.splitlines() if line.startswith("| rank"))
    assert "Δ vs best unimodal" not in head and "p vs logit_mean" not in head and "beats" not in head
    rows = [line for line in ret.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert all(line.count("|") == head.count("|") for line in rows)
    de = next(line for line in rows if "`dual_encoder`" in line)
    mean = np.mean([r.main_metric for r in records if r.strategy == "dual_encoder"])
    assert f"| {mean:.1f} ± " in de and f"{mean:.4f}" not in de
    assert "(early, mean 600.0)." in ret.split("**Verdict.**", 1)[1].split("\n", 1)[0]  # rerank:concat ranks all first
    assert next(line for line in rows if "rerank:logit_mean" in line).endswith("| failed |")
    cls = text.split("## cls — accuracy", 1)[1].split("\n## ", 1)[0]
    assert "Δ vs best unimodal" in cls and "p vs logit_mean" in cls  # a classification task keeps them
    pareto = (tmp_path / "pareto.md").read_text().split("### ret — rsum", 1)[1].split("\n### ", 1)[0]
    assert f"| `dual_encoder` | baseline | {mean:.1f} |" in pareto  # was 168.0000 beside the tables' 168.0
    again = to_markdown(pd.read_csv(tmp_path / "leaderboard.csv"))  # test_note comes back NaN: was a TypeError
    assert "## ret — rsum" in again and "## cls — accuracy" in again
