"""Reports and the regression gate, on records generated here (no real run needed)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml

from fusebench.cli import main
from fusebench.reports.compare import compare, load_board
from fusebench.reports.html import write_report
from fusebench.reports.leaderboard import write_leaderboard
from fusebench.reports.plots import pareto_front
from fusebench.reports.ranking import rank
from fusebench.results.records import Record, Throughput, write_records

STRATS = {"concat": "early", "gmu": "mid", "logit_mean": "late", "unimodal:a": "unimodal", "unimodal:b": "unimodal"}


def _records(shift: dict[str, float] | None = None, datasets=("d1", "d2", "d3")) -> list[Record]:
    rng = np.random.default_rng(0)
    shift = shift or {}
    out = []
    for di, ds in enumerate(datasets):
        for si, (name, fam) in enumerate(STRATS.items()):
            base = 0.6 + 0.05 * si * (1 if di % 2 == 0 else 0.5) + shift.get(name, 0.0)
            for seed in (1000, 1001, 1002):
                score = float(base + rng.normal(0, 0.003))
                out.append(Record(
                    dataset=ds, task="classification", strategy=name, family=fam, modalities=["a", "b"], seed=seed,
                    status="ok", metrics={"accuracy": score}, main_metric_name="accuracy", main_metric=score,
                    throughput=Throughput(1e4 * (si + 1), 1e5 / (si + 1), 1e3, 0.5, 0.9, 100.0, "cpu_peak_rss", 256, 30),
                    params_count=1000 * (si + 1), robustness={"noise:0.5": score - 0.05, "noise:1.0": score - 0.1,
                                                              "missing:a": score - 0.2},
                ))
    return out


def _run_dir(tmp_path, records, name="run"):
    d = tmp_path / name
    d.mkdir()
    write_records(d / "results.jsonl", records)
    (d / "run.json").write_text(json.dumps({"git_sha": "abc", "config": {"suite": {"trials": 3}},
                                            "storage": None, "machine": {"processor": "x86_64"}}))
    write_leaderboard(records, d)
    return d


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 1.5])
    y = np.array([0.9, 0.8, 0.5, 0.7])
    assert pareto_front(x, y).tolist() == [True, True, True, False]


def test_ranking_across_tasks_uses_best_unimodal_and_cd():
    from fusebench.reports.leaderboard import leaderboard

    r = rank(leaderboard(_records()))
    assert "unimodal (best)" in r.average_rank.index and "unimodal:a" not in r.average_rank.index
    assert r.average_rank.index[0] == "unimodal (best)"  # highest base in the generator
    assert r.friedman_p is not None and 0 <= r.friedman_p <= 1 and r.critical_difference > 0


def test_leaderboard_md_has_ranking_and_report_html_is_self_contained(tmp_path):
    d = _run_dir(tmp_path, _records())
    pareto = pd.read_csv(d / "pareto.csv")
    assert set(pareto.dataset) == {"d1", "d2", "d3"} and pareto.on_pareto_front.any()
    md = (d / "leaderboard.md").read_text()
    assert "## Overall ranking across tasks" in md and "Nemenyi critical difference" in md
    path = write_report(d)
    text = path.read_text()
    assert text.count("<table") >= 4 and "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside
    for ds in ("d1", "d2", "d3"):
        assert (d / "plots" / f"{ds}-pareto.png").stat().st_size > 1000
        assert (d / "plots" / f"{ds}-robustness.png").is_file()
    assert "Missing modality at test time" in text


def test_compare_catches_an_injected_regression_and_ignores_noise(tmp_path):
    base = _run_dir(tmp_path, _records(), "base")
    noisy = _run_dir(tmp_path, _records({"gmu": -0.001}), "noisy")
    broken = _run_dir(tmp_path, _records({"gmu": -0.10}), "broken")
    ok = compare(load_board(base), load_board(noisy), max_drop=0.02)
    assert ok.regressions == [] and ok.compared == 15
    bad = compare(load_board(base), load_board(broken), max_drop=0.02)
    assert len(bad.regressions) == 3 and all("REGRESSION" in m and " gmu accuracy: " in m for m in bad.regressions)
    assert "→" in bad.regressions[0] and "outside the seed-level noise band" in bad.regressions[0]  # gate: seed-level noise
    lenient = compare(load_board(base), load_board(broken), max_drop=0.2)
    assert lenient.regressions == []  # drop smaller than --max-drop


def test_compare_lists_new_and_removed_and_cli_exit_codes(tmp_path, capsys):
    base = _run_dir(tmp_path, _records(), "base")
    recs = [r for r in _records({"gmu": -0.1}) if r.strategy != "concat"]
    recs.append(Record(dataset="d1", task="classification", strategy="film", family="mid", modalities=["a"], seed=1000,
                       status="ok", main_metric_name="accuracy", main_metric=0.7))
    cur = _run_dir(tmp_path, recs, "cur")
    assert main(["compare", str(base), str(cur / "leaderboard.csv")]) == 1
    out = capsys.readouterr().out
    assert "NEW d1 film" in out and "REMOVED d1 concat" in out and out.count("REGRESSION") == 3
    assert main(["compare", str(base), str(base)]) == 0
    assert main(["compare", str(base), str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_report_cli_writes_html(tmp_path, capsys):
    d = _run_dir(tmp_path, _records())
    assert main(["report", str(d), "--html"]) == 0
    assert (d / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_github_workflow_is_valid():
    from pathlib import Path

    wf = yaml.safe_load((Path(__file__).resolve().parent.parent / ".github/workflows/leaderboard.yml").read_text())
    on = wf.get("on", wf.get(True))  # PyYAML reads the key `on` as boolean True
    assert "push" in on
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    uses = [s["uses"] for s in steps if "uses" in s]
    assert all("@v" in u for u in uses), uses
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    runs = " ".join(s.get("run", "") for s in steps)
    assert "fusebench compare" in runs and "fusebench report" in runs
    assert wf["permissions"] == {}  # least privilege: each job asks for what it needs
    deploy = [j for j in wf["jobs"].values() if any(s.get("uses", "").startswith("actions/deploy-pages@") for s in j["steps"])]
    assert deploy and deploy[0]["environment"]["name"] == "github-pages"
    assert deploy[0]["permissions"] == {"pages": "write", "id-token": "write"}
    for prefix in ("actions/checkout@", "actions/setup-python@", "actions/configure-pages@", "actions/upload-pages-artifact@",
                   "actions/cache/restore@", "actions/cache/save@"):
        assert any(u.startswith(prefix) for u in uses), prefix
    assert wf["jobs"]["unit"]["strategy"]["matrix"]["python"] == ["3.10", "3.11", "3.12", "3.13"]
    smoke = wf["jobs"]["smoke"]
    setup = next(s for s in smoke["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert "postgres" in smoke["services"] and "FUSEBENCH_PG_URL" in smoke["env"]
    assert "scripts/lint.sh" in runs


def test_cliques_and_cd_line_in_markdown():
    from fusebench.reports.ranking import Ranking

    r = Ranking(pd.Series({"a": 1.2, "b": 1.8, "c": 3.5, "d": 3.9}), n_tasks=6, friedman_p=0.01, critical_difference=1.0)
    assert r.cliques() == [["a", "b"], ["c", "d"]]
    md = r.to_markdown()
    assert "CD comparison: `a` (1.20) is not significantly better than `b`; significantly worse: `c`, `d`." in md


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.slow
def test_history_is_exported_at_run_time_and_the_report_never_opens_the_storage(tmp_path, kind):
    import optuna

    from fusebench.reports.html import _histories
    from fusebench.search.history import export_history
    from fusebench.search.storage import open_storage

    d = _run_dir(tmp_path, _records())
    db = tmp_path / ("s.journal" if kind == "journal" else "s.db")
    url = f"journal:///{db}" if kind == "journal" else f"sqlite:///{db}"
    study = optuna.create_study(study_name="d1/unimodal:a", storage=open_storage(url, heartbeat=False), direction="maximize")
    for v in (0.5, 0.7, 0.6):
        study.add_trial(optuna.trial.create_trial(value=v, params={"lr": v / 10}, distributions={
            "lr": optuna.distributions.FloatDistribution(0, 1)}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={}))
    path = export_history(study, d)
    assert path == d / "history" / "d1" / "unimodal__a.csv"
    rep1 = optuna.create_study(study_name="d1/unimodal:a/r1", storage=open_storage(url, heartbeat=False),
                               direction="maximize")
    rep1.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    assert export_history(rep1, d) == d / "history" / "d1" / "unimodal__a@r1.csv"
    db.unlink()  # the storage is gone (or unreachable): the report must not need it
    assert _histories(d, "d1") == {"unimodal:a": [0.5, 0.7, 0.6]}
    write_report(d)
    assert (d / "plots" / "d1-history.png").stat().st_size > 1000


def test_quality_plot_labels_do_not_overlap_with_20_strategies(tmp_path):
    """20 strategies crowded into a narrow band: every label box measured on the drawn figure is disjoint."""
    from fusebench.reports.plots import overlapping, quality_vs_throughput

    rng = np.random.default_rng(1)
    fams = ["early", "mid", "late", "unimodal"]
    board = pd.DataFrame({
        "dataset": "d", "status": "ok", "strategy": [f"strategy_{i:02d}" for i in range(20)],
        "family": [fams[i % 4] for i in range(20)], "mean": 0.8 + rng.normal(0, 0.004, 20),
        "ci95": 0.01, "ci95_low": np.nan, "ci95_high": np.nan, "infer_samples_per_s": 1e4 * (1 + rng.random(20)),
        "metric": "accuracy", "rank": np.arange(1, 21, dtype=float)})
    path = quality_vs_throughput(board, "d", tmp_path)
    boxes = json.loads(path.with_suffix(".labels.json").read_text())
    assert len(boxes) >= 40  # 20 point labels + 20 key entries + axes text
    assert overlapping(boxes) == []
    # the check itself can fail: two boxes drawn on top of each other are reported
    assert overlapping([{"text": "a", "x0": 0, "y0": 0, "x1": 10, "y1": 5}, {"text": "b", "x0": 5, "y0": 2, "x1": 12, "y1": 8}])


def test_report_without_storage_or_robustness_still_renders(tmp_path):
    import dataclasses

    recs = [dataclasses.replace(r, robustness=None) for r in _records()]
    d = _run_dir(tmp_path, recs)
    text = write_report(d).read_text()
    assert "Verdict." in text and "Δ vs best unimodal" in text
    assert "robustness" not in text.lower() and not (d / "optuna.journal").exists()
    assert "Overall ranking" in text and text.count("data:image/png;base64,") == 1 + 3 * 2  # CD + pareto/families


def test_no_critical_difference_diagram_when_friedman_does_not_reject(tmp_path):
    """Demšar: the CD diagram (a post-hoc comparison) is drawn only when the Friedman test rejects."""
    from fusebench.reports.plots import critical_difference
    from fusebench.reports.ranking import Ranking

    ranks = pd.Series({"a": 1.2, "b": 1.8, "c": 3.5, "d": 3.9})
    assert critical_difference(Ranking(ranks, n_tasks=6, friedman_p=0.30, critical_difference=None), tmp_path) is None
    drawn = critical_difference(Ranking(ranks, n_tasks=6, friedman_p=0.01, critical_difference=1.0), tmp_path)
    assert drawn is not None and drawn.is_file()


class _Tables(HTMLParser):
    """The <table>s of an HTML page as lists of rows of cell texts (th and td alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_leaderboard_shows_each_rows_trials(tmp_path):
    """The HTML board has the Markdown board's trials column: completed/budgeted summed over the search
    replicates, pruned and failed (a fixed baseline: '–'), the search seconds and the cap-bound flag."""
    records = []
    for rep in (0, 1):
        for seed in (1000, 1001):
            for name, fam, counts in (("concat", "early", dict(n_trials=10, n_trials_complete=7, n_trials_pruned=2,
                                                                n_trials_failed=1, n_trials_budget=10)),
                                      ("gmu", "mid", dict(n_trials=6, n_trials_complete=6, n_trials_budget=10,
                                                          cap_bound=True)),
                                      ("unimodal:a", "unimodal", dict(n_trials=10, n_trials_complete=10,
                                                                      n_trials_budget=10)),
                                      ("majority", "baseline", {})):
                if name == "majority" and rep:
                    continue
                score = 0.6 + 0.01 * (seed % 7) + 0.02 * rep
                records.append(Record(dataset="d1", task="classification", strategy=name, family=fam,
                                      modalities=["a"], seed=seed, replicate=rep, status="ok",
                                      metrics={"accuracy": score}, main_metric_name="accuracy", main_metric=score,
                                      params_count=10, search_seconds=3.0 if counts else 0.0, **counts))
    text = write_report(_run_dir(tmp_path, records)).read_text()
    board = next(t for t in _tables_of(text) if t and "strategy" in t[0] and "runs" in t[0])
    head = board[0]
    assert "trials" in head, head
    trials = {row[head.index("strategy")]: row[head.index("trials")] for row in board[1:]}
    assert trials == {"concat": "14/20 (4 pruned, 2 failed)", "gmu": "12/20 (0 pruned, 0 failed)",
                      "unimodal:a": "20/20 (0 pruned, 0 failed)", "majority": "–"}
    flags = {row[head.index("strategy")]: row[head.index("flags")] for row in board[1:]}
    assert flags["gmu"] == "cap bound" and flags["concat"] == ""
    searched = {row[head.index("strategy")]: row[head.index("search s")] for row in board[1:]}
    assert searched["concat"] == "6.0" and searched["majority"] == "0.0"
    md = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "| 14/20 (4 pruned, 2 failed) |" in md  # the same text as the Markdown board


def _tables_of(text: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def test_compare_says_whether_the_two_runs_share_a_machine(tmp_path, capsys):
    """A CPU run repeats bit for bit on one machine but moved on 25 of 88 smoke cells on another host
    (stop 23); the gate prints both runs' machine fields so that such a drift can be told from a bug."""
    from fusebench.reports.compare import load_machine, machine_note
    from fusebench.results.provenance import cpu_identity

    base = _run_dir(tmp_path, _records(), "base")
    cur = _run_dir(tmp_path, _records(), "cur")
    here = {"cpu_model": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 1 stepping 1", "torch_cpu_capability": "AVX2"}
    other = {**here, "cpu_id": "GenuineIntel family 6 model 106 stepping 6", "torch_cpu_capability": "AVX512"}
    (base / "leaderboard.csv").rename(tmp_path / "leaderboard.csv")  # a committed baseline: the csv, machine.json
    (tmp_path / "machine.json").write_text(json.dumps({"machine": here, "versions": {"torch": "2.13.0+cpu"}}))
    (cur / "run.json").write_text(json.dumps({"machine": other, "versions": {"torch": "2.13.0+cpu"}}))
    assert load_machine(tmp_path / "leaderboard.csv") == {**here, "torch": "2.13.0+cpu"}
    assert main(["compare", str(tmp_path / "leaderboard.csv"), str(cur)]) == 0
    out = capsys.readouterr().out
    assert ("machines differ: cpu_id: AuthenticAMD family 25 model 1 stepping 1 vs GenuineIntel family 6 model 106 "
            "stepping 6; torch_cpu_capability: AVX2 vs AVX512") in out
    same = machine_note({**here, "torch": "2.13.0+cpu"}, {**here, "torch": "2.13.0+cpu", "blas": "MKL"})
    assert same.startswith("machines: the same cpu_model, cpu_id, torch_cpu_capability, torch") and "blas" in same
    assert "not recorded" in machine_note(None, here)
    (tmp_path / "machine.json").write_text("{not json")
    assert load_machine(tmp_path / "leaderboard.csv") is None
    ident = cpu_identity()  # this machine (Linux): the fields the note compares
    assert ident["torch_cpu_capability"] and ("cpu_id" in ident) == ("vendor_id" in open("/proc/cpuinfo").read())


def test_a_cell_still_searching_is_drawn_in_its_family_panel_of_the_history(tmp_path):
    """The published ESC-50 history drew `mbt` (searching, no record yet) in a panel "other": the panel
    families came from the records only. A history without records takes its family from the registry."""
    import json as json_

    d = _run_dir(tmp_path, _records())
    folder = d / "history" / "d1"
    folder.mkdir(parents=True)
    for stem in ("mbt", "unimodal__a"):  # mbt: no record; unimodal:a has records (family from them)
        pd.DataFrame({"number": [0, 1, 2], "state": "COMPLETE", "value": [0.5, 0.6, 0.55]}).to_csv(
            folder / f"{stem}.csv", index=False)
    write_report(d)
    texts = [b["text"] for b in json_.loads((d / "plots" / "d1-history.labels.json").read_text())]
    assert "mbt" in texts and "mid" in texts and "other" not in texts
