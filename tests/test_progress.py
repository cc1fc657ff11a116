"""Progress display: plain lines for logs (start, every interval, finish, ETA), -q/-v/--log-file anywhere
on the command line, and progress from `--jobs N` worker processes reaching the parent."""

from __future__ import annotations

import logging

import pytest
import torch

from fusebench.cli import main
from fusebench.core import progress
from fusebench.core.errors import UsageError
from fusebench.run.in_progress import share_done_before


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_backend_prints_start_each_interval_and_finish_with_eta(caplog):
    clock = Clock()
    b = progress.PlainBackend(interval_s=10, clock=clock)
    caplog.set_level(logging.INFO, logger="fusebench.progress")
    b.handle(progress.Event("start", "encode:x", "encode x", 100, unit="items"))
    clock.t += 4
    b.handle(progress.Event("advance", "encode:x", n=20))  # 4 s < interval: no line
    clock.t += 6
    b.handle(progress.Event("advance", "encode:x", n=30))  # 10 s since the last line: one line
    clock.t += 1
    b.handle(progress.Event("advance", "encode:x", n=10))  # 1 s later: quiet again
    clock.t += 2
    b.handle(progress.Event("finish", "encode:x", n=40))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("started encode x | 0/100 items (0%)")
    # 50 items in 10 s: 5 items/s, 50 left → ETA 10 s
    assert "50/100 items (50%)" in lines[1] and "5.0 items/s" in lines[1] and "ETA 10s" in lines[1]
    assert lines[2].startswith("finished encode x | 100/100 items (100%)")
    assert not b.tasks


def test_eta_format_and_slow_rates():
    assert progress.format_eta(None) == "?"
    assert progress.format_eta(42) == "42s" and progress.format_eta(185) == "3m05s"
    assert progress.format_eta(3720) == "1h02m"
    st = progress._State("sweep", 10, "cells", started=0.0, done=2, worked=2)
    line = progress.describe(st, now=60.0)  # 30 s per cell, 8 left → 4 min
    assert "30.0 s/cell" in line and "ETA 4m00s" in line


def test_a_resumed_step_measures_its_rate_on_the_work_done_here(caplog):
    """A sweep resumed with 42 of 107 cells done before: the rate and ETA count only the cells this process
    finished. Before, `advance(42)` at the start made the first line read 3.8 s/cell, ETA 4 min for 65 cells
    that each take hours (the standard run's log, stop 38)."""
    clock = Clock()
    b = progress.PlainBackend(interval_s=0, clock=clock)
    caplog.set_level(logging.INFO, logger="fusebench.progress")
    b.handle(progress.Event("start", "sweep", "sweep", 107, unit="cells"))
    clock.t += 2
    b.handle(progress.Event("skip", "sweep", n=42, status="resumed"))
    clock.t += 598
    b.handle(progress.Event("advance", "sweep", n=1))  # one cell in 600 s: 64 left → 640 min
    lines = [r.getMessage() for r in caplog.records]
    assert "42/107 cells (39%; 42 done before)" in lines[1] and "ETA ?" in lines[1]  # nothing done here yet
    assert "43/107 cells (40%; 42 done before)" in lines[2] and "600.0 s/cell" in lines[2]
    assert "ETA 10h40m" in lines[2]
    assert progress.measured(1, 43, 107, 600.0) == (1 / 600, 64 * 600.0)
    assert progress.measured(0, 42, 107, 600.0)[1] is None


def test_a_cell_begun_before_adds_only_its_unfinished_share_to_the_rate(caplog):
    """Review of stop 38: a cell resumed with most of its steps done finished in minutes and counted as a
    whole cell of work, so the sweep's ETA was again ~15× too short. Its finish now adds its share left."""
    clock = Clock()
    b = progress.PlainBackend(interval_s=0, clock=clock)
    caplog.set_level(logging.INFO, logger="fusebench.progress")
    b.handle(progress.Event("start", "sweep", "sweep", 10, unit="cells"))
    clock.t += 300
    b.handle(progress.Event("advance", "sweep", n=1, work=0.25))  # 3/4 of it was done before: 300 s for 1/4 cell
    assert "1/10 cells (10%) | 1200.0 s/cell | elapsed 5m00s, ETA 3h00m" in caplog.records[-1].getMessage()
    b.handle(progress.Event("advance", "sweep", n=2, status="x failed to build/encode", work=0))
    assert "3/10 cells (30%) | 1200.0 s/cell" in caplog.records[-1].getMessage()  # no work: the rate stays


def test_a_trivial_baselines_share_is_of_its_seeds_alone(tmp_path):
    """Review of stop 38: `majority` (one replicate, no search) with 1 of 2 seeds stored read 0.125 of R × (trials
    + seeds) = 8 steps; its steps are its 2 seeds."""
    import fusebench.strategies  # noqa: F401  (registers `majority`)
    from fusebench.run.seed_store import SeedStore

    store = SeedStore(tmp_path, "toy", "majority")
    json_path, _ = store._paths(0, 0)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text("{}")
    assert share_done_before(tmp_path, {"toy": ["majority"]}, set(), 2, 2, 2) == {("toy", "majority"): 0.5}


def test_rich_backend_eta_counts_only_the_work_done_here():
    import io

    from rich.console import Console

    clock = Clock()
    b = progress.RichBackend(Console(file=io.StringIO(), force_terminal=True, width=160))
    b.progress.get_time = clock  # tasks read their elapsed time from this clock
    b.handle(progress.Event("start", "sweep", "sweep", 107, unit="cells"))
    b.handle(progress.Event("skip", "sweep", n=42, status="resumed"))
    b.handle(progress.Event("start", "cell:d/x", "d/x", 5, unit="steps"))
    clock.t += 600
    b.handle(progress.Event("advance", "sweep", n=1))
    task = next(t for t in b.progress.tasks if t.description == "sweep")
    column = next(c for c in b.progress.columns if type(c).__name__ == "RateEtaColumn")
    assert column.render(task).plain == "600.0 s/cell ETA 10h40m"
    b.close()


def test_mode_follows_the_terminal_and_quiet():
    class Tty:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert progress.choose_mode(False, stream=Tty()) == "rich"
    assert progress.choose_mode(False, stream=Pipe()) == "plain"
    assert progress.choose_mode(True, stream=Tty()) == "off"
    assert progress.choose_mode(False, "plain", Tty()) == "plain"
    with pytest.raises(UsageError, match="rich, plain or off"):
        progress.choose_mode(False, "loud")


def test_a_broken_display_never_fails_the_work():
    class Broken:
        def handle(self, ev):
            raise RuntimeError("terminal gone")

        def close(self):
            pass

    old = progress.set_backend(Broken())
    try:
        progress.start("k", "k", 1)
        progress.advance("k")
    finally:
        progress.set_backend(old)


@pytest.mark.parametrize("argv", [["-q", "list", "metrics"], ["list", "metrics", "-q"], ["list", "-v", "metrics"]])
def test_quiet_and_verbose_anywhere_on_the_line(argv, capsys):
    # `list metrics` reads no config folder, so config state left by other tests cannot change the outcome
    assert main(argv) == 0
    assert "accuracy" in capsys.readouterr().out


def test_quiet_and_verbose_together_is_a_usage_error(capsys):
    assert main(["list", "suites", "-q", "-v"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_log_file_that_cannot_be_written_exits_2(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    assert main(["list", "suites", "--log-file", str(tmp_path / "dir")]) == 2
    assert "--log-file" in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_2_progress_from_workers_reaches_the_parent_log(synthetic_bundle, monkeypatch, tmp_path, capsys):
    """The cells run in two spawned worker processes; their trial/seed progress must reach the parent's
    log file, together with the plan line and the sweep's lines."""
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("FUSEBENCH_PROGRESS", "plain")
    # a cache of its own: with the session's shared cache, a toy encoding done by an earlier test
    # would be a cache hit and no encoding progress would be printed (order-dependent failure)
    monkeypatch.setenv("FUSEBENCH_CACHE", str(tmp_path / "cache"))
    log_file = tmp_path / "run.log"
    out = tmp_path / "run"
    argv = ["run", "--suite", "toy", "--data-dir", str(data), "--out", str(out), "--jobs", "2",
            "--strategies", "majority,unimodal:lexical", "--log-file", str(log_file)]
    assert main(argv) == 0
    text = log_file.read_text()
    assert "plan: 1 task(s) (toy), 2 cell(s), 2 trial(s) × 2 seed(s) per cell" in text
    assert str(out / "results.jsonl") in text
    # emitted in the worker processes: 2 trials + 2 seeds for unimodal, 2 seeds for majority
    assert "finished toy/majority | 2/2 steps (100%)" in text
    assert "finished toy/unimodal:lexical | 4/4 steps (100%)" in text
    assert "finished sweep | 2/2 cells (100%)" in text
    # encoding progress of the views the cells need
    assert "finished encode toy/train/lexical (tfidf)" in text
    assert "fusebench: 2 cell(s) ok" in capsys.readouterr().out


def test_rich_backend_draws_bars_with_rate_and_eta_and_stops_when_idle():
    import io

    from rich.console import Console

    buf = io.StringIO()
    b = progress.RichBackend(Console(file=buf, force_terminal=True, width=160))
    b.handle(progress.Event("start", "sweep", "sweep", 4, unit="cells"))
    b.handle(progress.Event("start", "cell:d/concat", "d/concat", 5, unit="steps"))
    b.handle(progress.Event("advance", "cell:d/concat", n=2, status="trial 2/3"))
    b.handle(progress.Event("finish", "cell:d/concat", n=3))
    b.handle(progress.Event("advance", "sweep", n=1))
    assert b.live
    b.handle(progress.Event("finish", "sweep", n=3))
    assert not b.live  # idle: the display stopped, the result line prints below it
    text = buf.getvalue()
    assert "sweep" in text and "d/concat" in text and "ETA" in text and "4/4" in text
    b.close()


def test_worker_command_shows_its_trials(synthetic_bundle, monkeypatch, tmp_path):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("FUSEBENCH_PROGRESS", "plain")
    out = tmp_path / "run"
    url = f"journal:///{tmp_path / 'studies.journal'}"
    assert main(["run", "--suite", "toy", "--strategies", "unimodal:lexical", "--data-dir", str(data), "--out", str(out),
                 "--storage", url, "--prepare-only", "-q"]) == 0
    log_file = tmp_path / "worker.log"
    torch.set_num_threads(3)  # the caller's setting, whatever the worker trains with
    assert main(["worker", "--study", "toy/unimodal:lexical", "--storage", url, "--data-dir", str(data),
                 "--log-file", str(log_file)]) == 0
    assert torch.get_num_threads() == 3  # before: left at FUSEBENCH_TRAIN_THREADS for every later test
    text = log_file.read_text()
    assert "started worker toy/unimodal:lexical | 0/2 trials (0%)" in text
    assert "finished worker toy/unimodal:lexical | 2/2 trials (100%)" in text



def test_a_resumed_cell_counts_the_trials_done_before(synthetic_bundle, monkeypatch, tmp_path):
    """A cell resumed after its searches finished (killed during its seed fits) starts its progress
    where it stopped: the trials done before count, so the bar reaches its total and the ETA is true.
    Before, the count restarted at 0 and the cell finished at 4/8 steps."""
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("FUSEBENCH_PROGRESS", "plain")
    monkeypatch.setenv("FUSEBENCH_PROGRESS_INTERVAL", "0")  # a line for every event
    out = tmp_path / "run"
    argv = ["run", "--suite", "toy", "--strategies", "unimodal:lexical", "--replicates", "2", "--data-dir", str(data),
            "--out", str(out)]
    assert main(argv) == 0
    first = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text("")  # the records are gone, the finished studies stay in the journal
    log_file = tmp_path / "resumed.log"
    assert main([*argv, "--log-file", str(log_file)]) == 0
    text = log_file.read_text()
    # 2 replicates × (2 trials + 2 seeds); the 4 trials done before count toward the total, not the rate
    assert "finished toy/unimodal:lexical | 8/8 steps (100%; 4 done before)" in text
    assert "replicate 1: 2 trial(s) done before" in text
    assert share_done_before(out, {"toy": ["unimodal:lexical"]}, set(), 2, 2, 2) == {("toy", "unimodal:lexical"): 0.5}
    moved = tmp_path / "elsewhere.journal"  # a run with --storage elsewhere: its trials are read from there
    (out / "optuna.journal").rename(moved)
    assert share_done_before(out, {"toy": ["unimodal:lexical"]}, set(), 2, 2, 2) == {}
    assert share_done_before(out, {"toy": ["unimodal:lexical"]}, set(), 2, 2, 2, f"journal:///{moved}") == \
        {("toy", "unimodal:lexical"): 0.5}
    assert "replicate 2: 2 trial(s) done before" in text
    assert "trial #" not in text  # no search trial ran again
    assert len((out / "results.jsonl").read_text().splitlines()) == len(first.splitlines()) == 4


@pytest.mark.parametrize("verbose", [False, True])
def test_a_records_traceback_reaches_the_terminal_with_v_only_and_the_log_file_always(tmp_path, capsys, verbose):
    from fusebench.run import console

    log_file = tmp_path / "run.log"
    backend = console.setup(console.ConsoleOptions(verbose=verbose, log_file=log_file, progress="plain"))
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            logging.getLogger("optuna.study._optimize").warning("Trial 1 failed because of OSError", exc_info=True)
    finally:
        console.teardown(backend)
        for handler in logging.getLogger().handlers:
            handler.flush()
    err = capsys.readouterr().err
    assert err.count("Trial 1 failed because of OSError") == 1  # through the root once, not optuna's own handler too
    assert ("Traceback" in err) == verbose
    text = log_file.read_text()
    assert "Trial 1 failed because of OSError" in text and "Traceback (most recent call last)" in text
