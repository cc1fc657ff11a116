"""The `fusebench` command line (see DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from fusebench.core import deadline, diskfull
from fusebench.core.errors import UsageError
from fusebench.run import calibrate_cli, extensions, interrupt, stop_cli, throughput_cli, timing_cli


def _common(top: bool) -> argparse.ArgumentParser:
    """-q/-v/--log-file, accepted before and after the subcommand (a subcommand's copy must not reset
    what was given before it, hence SUPPRESS as its default)."""
    c = argparse.ArgumentParser(add_help=False)
    dflt = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    c.add_argument("-q", "--quiet", action="store_true", default=dflt(False),
                   help="no progress display; warnings, errors and the result only")
    c.add_argument("-v", "--verbose", action="store_true", default=dflt(False), help="debug logging")
    c.add_argument("--log-file", default=dflt(None), help="also write a DEBUG log with progress lines to this file")
    return c


class _Sub:
    """add_parser with the common options on every subcommand."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self.sub, self.common = sub, _common(top=False)

    def add_parser(self, *a, **kw) -> argparse.ArgumentParser:
        return self.sub.add_parser(*a, parents=[self.common], **kw)

    @property
    def choices(self) -> dict[str, argparse.ArgumentParser]:
        return self.sub.choices


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusebench", description="Compare multimodal fusion strategies under one fair protocol.",
                                parents=[_common(top=True)])
    p.add_argument("--version", action="version", version=_version_line())
    extensions.add_options(p)
    sub = _Sub(p.add_subparsers(dest="command", required=True))

    ls = sub.add_parser("list", help="list registered strategies, datasets or suites")
    ls.add_argument("what", choices=["strategies", "datasets", "suites", "encoders", "metrics"])
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    data = sub.add_parser("data", help="inspect the data bundle")
    data_sub = _Sub(data.add_subparsers(dest="data_command", required=True))
    chk = data_sub.add_parser("check", help="verify files against MANIFEST.json and print row counts")
    chk.add_argument("--data-dir", help="data root (default: $FUSEBENCH_DATA, ../shared/data, ~/.cache/fusebench/data)")

    run = sub.add_parser("run", help="search and evaluate strategies on datasets")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--suite", help="a suite from datasets_cfg/suites (smoke, standard, tiny)")
    what.add_argument("--datasets", help="comma-separated dataset names (with --strategies)")
    run.add_argument("--strategies", help="comma-separated strategy names, or 'all'; unimodal:VIEW[+VIEW] picks views, "
                     "FUSION:A+B fuses only views A and B")
    run.add_argument("--size", help="dataset size to use with --datasets (smoke, tiny, full); default full")
    run.add_argument("--trials", type=int, help="optuna trials per strategy (equal for all)")
    run.add_argument("--seeds", type=int, help="evaluation seeds per strategy (K, per search replicate)")
    run.add_argument("--replicates", type=int, help="independent searches per cell (R), each with its own sampler seed")
    run.add_argument("--rerank-negatives", choices=["random", "hard"],
                     help="retrieval re-rankers' mismatched training pairs: random captions, or hard ones mined from "
                          "the dual encoder's top rerank_k (default: the suite's, else random)")
    run.add_argument("--epochs", type=int, help="max epochs per training run")
    run.add_argument("--encoders", help="encoder modes, comma-separated: frozen (cached features), last:N (last N "
                     "blocks train with the fusion), full; e.g. frozen,last:2 puts both rows side by side")
    run.add_argument("--patience", type=int, help="early-stopping patience in evaluations (one per epoch); "
                     "see also the suite's patience_steps/min_steps")
    run.add_argument("--modality-dropout", type=float, help="zero each modality of a training example with this probability")
    run.add_argument("--gradient-blending", action="store_true", default=None,
                     help="Gradient-Blending loss weights (Wang et al. 2020); needs strategies with per-modality branches")
    run.add_argument("--storage", help="optuna storage URL: journal:///abs/file, sqlite:///file or "
                     "postgresql+psycopg://user:pass@host:port/db (default: RUN_DIR/optuna.journal)")
    run.add_argument("--prepare-only", action="store_true",
                     help="build, encode and create the studies in --storage, then exit (start workers next)")
    run.add_argument("--out", default="runs/latest", help="run directory (default runs/latest); re-running resumes")
    run.add_argument("--new-run", action="store_true",
                     help="when --out holds another run, write to the first free OUT.N beside it instead of resuming")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--amp-bf16", action="store_true", help="bf16 autocast in training (meant for CUDA; runs on CPU too)")
    run.add_argument("--compile", action="store_true", help="torch.compile each model for training (compile time not timed)")
    run.add_argument("--sequential-seeds", action="store_true",
                     help="train evaluation seeds one after another instead of as one batched model (same results)")
    run.add_argument("--trial-batch", type=int, help="search trials asked together and trained as one batched model "
                     "where their shapes allow (default: the suite's trial_batch, else 1 = one after another)")
    run.add_argument("--jobs", type=int, help="cells trained in parallel processes, on CPU or a CUDA GPU "
                     "(default: the suite's, else 1)")
    run.add_argument("--data-dir", help="data root")
    run.add_argument("--stop-after", help="after this long (600, 45m, 3h50m) start no new trial, evaluation seed or cell; "
                     f"the work in flight ends, then exit {deadline.EXIT_CODE} (re-run to resume). Set it inside a "
                     "time box: an interrupt throws the trials in flight away")

    wk = sub.add_parser("worker", help="join an existing study (created by `run`) and run its trials until the budget is done")
    wk.add_argument("--study", required=True, help="study name, <dataset>/<strategy> (e.g. imdb/concat)")
    wk.add_argument("--storage", required=True, help="the owner run's storage URL (postgresql+psycopg://... across machines)")
    wk.add_argument("--device", default="auto", help="auto, cpu or cuda")
    wk.add_argument("--data-dir", help="data root (default: the study's, else the usual lookup)")

    throughput_cli.add_arguments(
        sub.add_parser("throughput", help="measure inference throughput (and harness overhead) without searching"))

    stop_cli.add_arguments(sub.add_parser("stop", help="stop a running `run` without losing work: no new trials; "
                                          f"the work in flight ends, then it exits {deadline.EXIT_CODE}"))
    timing_cli.add_arguments(sub.add_parser("timing", help="time to leaderboard: record a run in the history CSV, "
                                            "or compare it with the history and flag a slowdown"))

    calibrate_cli.add_arguments(sub.add_parser("calibrate", help="A/A check: the same strategy searched as two cells, "
                                               "N times; rejection rate and CI coverage"))

    cmp_ = sub.add_parser("compare", help="regression gate: compare two leaderboards (run dirs or leaderboard.csv)")
    cmp_.add_argument("baseline")
    cmp_.add_argument("current")
    cmp_.add_argument("--max-drop", type=float, default=0.02, help="largest tolerated absolute drop of a mean (default 0.02)")

    rep = sub.add_parser("report", help="rebuild the leaderboard of a run directory")
    rep.add_argument("run_dir")
    rep.add_argument("--html", action="store_true", help="also write report.html and plots/")

    fgt = sub.add_parser("forget", help="drop cells from a run (records, predictions, histories, stored seeds, "
                         "studies) so that the next `run` into it searches them again")
    fgt.add_argument("run_dir")
    fgt.add_argument("cells", nargs="+", metavar="DATASET/STRATEGY", help="e.g. esc50/lmf (as the leaderboard names it)")
    fgt.add_argument("--storage", help="storage URL (default: RUN_DIR/optuna.journal, else the one run.json names)")

    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on a run's studies (pip install 'fusebench[dashboard]')")
    dash.add_argument("run_dir")
    dash.add_argument("--storage", help="storage URL (default: RUN_DIR/optuna.journal, else the one run.json names)")
    dash.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    chk = sub.add_parser("check-strategy", help="run the generated strategy contract tests on a plugin's strategies")
    chk.add_argument("module", help="the plugin: an importable module name or a .py file")
    chk.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    for sp in sub.choices.values():  # global options, accepted after the command too
        extensions.add_options(sp, after_command=True)
    return p


def _version_line() -> str:
    from fusebench import __version__
    from fusebench.results.provenance import source_revision

    return f"fusebench {__version__} (source {source_revision() or 'unknown'})"


def _cmd_check_strategy(args: argparse.Namespace) -> int:
    from fusebench.strategies.plugin_check import check_strategy

    return check_strategy(extensions.plugin_path(args.module), args.pytest_args)


def _cmd_list(args: argparse.Namespace) -> int:
    from fusebench.config import catalog
    from fusebench.core.metrics import METRICS
    from fusebench.features.encoders import ENCODERS
    from fusebench.run.selection import can_rerank
    from fusebench.strategies import STRATEGIES
    if args.what == "strategies":  # `reranks`: whether it re-ranks a retrieval task's candidates (row `rerank:<name>`)
        items = [{**info.to_json(), "reranks": can_rerank(info)} for _, info in STRATEGIES.items()]
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for it in items:
                rerank = "rerank" if it["reranks"] else "-"
                print(f"{it['name']:20s} {it['family']:9s} {it['input_kind']:7s} {rerank:7s} {it['citation']}")
    elif args.what == "datasets":
        items = []
        for name in catalog.dataset_files():
            cfg = catalog.get_dataset(name)
            items.append({"name": name, "task": cfg.task, "main_metric": cfg.main_metric, "num_classes": cfg.num_classes,
                          "views": {k: dataclasses.asdict(v) for k, v in cfg.views.items()},
                          "sizes": sorted(cfg.sizes) + ["full"], "citation": cfg.citation, "description": cfg.description})
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for it in items:
                views = ", ".join(f"{k}({v['encoder']})" for k, v in it["views"].items())
                print(f"{it['name']:14s} {it['task']:14s} {it['main_metric']:9s} {views}")
    elif args.what == "suites":
        items = [dataclasses.asdict(catalog.get_suite(n)) for n in catalog.suite_files()]
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for it in items:
                print(f"{it['name']:10s} datasets={','.join(it['datasets'])} trials={it['trials']} seeds={it['seeds']} "
                      f"size={it['size']}")
    else:
        names = (ENCODERS if args.what == "encoders" else METRICS).names()
        print(json.dumps(names) if args.json else "\n".join(names))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from fusebench.core.paths import resolve_data_root
    from fusebench.data.datacheck import check, format_report

    root = resolve_data_root(args.data_dir)
    checks = check(root)
    print(format_report(root, checks))
    return 0 if all(c.ok for c in checks) else 1


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _cmd_run(args: argparse.Namespace) -> int:
    from fusebench.config import catalog
    from fusebench.config.loader import SuiteConfig
    from fusebench.run.runner import RunConfig, run
    from fusebench.run.selection import check_selection

    if args.suite:  # the suite's own strategies are checked where it lists them, unless --strategies replaces them
        suite = catalog.get_suite(args.suite, check_strategy=None if args.strategies else check_selection)
    elif not args.strategies:
        raise UsageError("--datasets needs --strategies (comma-separated names, or 'all')")
    try:
        if not args.suite:
            suite = SuiteConfig(name="custom", description="from the command line", datasets=_split(args.datasets),
                                strategies=_split(args.strategies), size=args.size or "full")
        elif args.strategies:
            suite = dataclasses.replace(suite, strategies=_split(args.strategies))
    except ValueError as exc:
        raise UsageError(f"--datasets/--strategies: {exc}") from None
    if args.size:
        suite = dataclasses.replace(suite, size=args.size)
    overrides = {k: v for k, v in (("trials", args.trials), ("seeds", args.seeds), ("replicates", args.replicates),
                                    ("epochs", args.epochs), ("patience", args.patience), ("jobs", args.jobs),
                                    ("trial_batch", args.trial_batch), ("rerank_negatives", args.rerank_negatives),
                                    ("modality_dropout", args.modality_dropout),
                                    ("gradient_blending", args.gradient_blending),
                                    ("encoders", args.encoders)) if v is not None}
    try:
        suite = dataclasses.replace(suite, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop_after = deadline.parse_duration(args.stop_after) if args.stop_after is not None else None
    with deadline.stopping_at(stop_after):
        summary = run(RunConfig(suite=suite, out=Path(args.out), data_dir=args.data_dir, device=args.device,
                                storage=args.storage, jobs=suite.jobs, prepare_only=args.prepare_only,
                                amp_bf16=args.amp_bf16, compile=args.compile, new_run=args.new_run,
                                batch_seeds=not args.sequential_seeds))
    if args.prepare_only:
        print(f"fusebench: studies ready in {args.storage or 'the run directory'}; start `fusebench worker` processes")
        return 0
    print(
        f"fusebench: {summary.cells_ok} cell(s) ok, {summary.cells_failed} failed, {summary.cells_skipped} already done; "
        f"{summary.seconds:.1f}s; results in {summary.run_dir}/results.jsonl, leaderboard in {summary.run_dir}/leaderboard.md"
    )
    return 1 if summary.cells_failed else 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from fusebench.run.worker import run_worker

    s = run_worker(args.study, args.storage, device=args.device, data_dir=args.data_dir)
    print(f"fusebench worker: study {s.study}: {s.trials_here} trial(s) finished here, "
          f"{s.finished}/{s.budget} finished in all; {s.seconds:.1f}s")
    return 0 if s.finished >= s.budget else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from fusebench.reports.compare import compare, load_board, load_machine, machine_note

    result = compare(load_board(Path(args.baseline)), load_board(Path(args.current)), args.max_drop)
    print(machine_note(load_machine(Path(args.baseline)), load_machine(Path(args.current))))
    print(result.report())
    return 1 if result.regressions else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fusebench.reports.leaderboard import write_leaderboard
    from fusebench.results.records import load_records
    from fusebench.run.phases import add_report_seconds

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.jsonl").is_file():
        raise UsageError(f"{run_dir}/results.jsonl not found: pass the --out directory of a `fusebench run`")
    t0 = time.perf_counter()
    write_leaderboard(load_records(run_dir / "results.jsonl", strict=True), run_dir)
    if args.html:
        from fusebench.reports.html import write_report

        write_report(run_dir)
    add_report_seconds(run_dir, time.perf_counter() - t0)
    print(f"fusebench: wrote {run_dir}/leaderboard.md")
    if args.html:
        print(f"fusebench: wrote {(run_dir / 'report.html').resolve()}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    from fusebench.run.forget import forget_cells
    from fusebench.search.dashboard import run_storage_url

    run_dir = Path(args.run_dir)
    for f in forget_cells(run_dir, args.cells, run_storage_url(run_dir, args.storage)):
        why = f" (its re-ranking ran on {f.because_of}'s candidates)" if f.because_of else ""
        print(f"fusebench: forgot {f.cell}{why}: {f.records} record(s); studies {', '.join(f.studies) or 'none'}; "
              f"removed {', '.join(f.files) or 'no files'}")
    print(f"fusebench: the next `fusebench run` into {run_dir} with its suite searches and evaluates them again")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from fusebench.search import dashboard

    url = dashboard.run_storage_url(Path(args.run_dir), args.storage)
    print(dashboard.describe(url, args.host, args.port), flush=True)
    dashboard.serve(url, args.host, args.port)
    return 0


def _quiet_libraries() -> None:
    """Progress bars of datasets/transformers drown the run log; fusebench logs its own progress."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    # first: an interrupt during the imports below (seconds of torch, transformers, optuna) is as
    # likely as any to land in a finalizer, and a lost one let a suite run on past its time box
    with interrupt.handling():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from fusebench.run import console

    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    display = None
    try:
        display = console.setup(console.ConsoleOptions(
            quiet=args.quiet, verbose=args.verbose, log_file=Path(args.log_file) if args.log_file else None))
        _quiet_libraries()
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        handler = {"list": _cmd_list, "data": _cmd_data, "run": _cmd_run, "worker": _cmd_worker, "report": _cmd_report,
                   "compare": _cmd_compare, "calibrate": calibrate_cli.command, "throughput": throughput_cli.command,
                   "timing": timing_cli.command, "dashboard": _cmd_dashboard, "forget": _cmd_forget,
                   "check-strategy": _cmd_check_strategy, "stop": stop_cli.command}[args.command]
        with extensions.applied(args):
            return handler(args)
    except UsageError as exc:
        print(f"fusebench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not diskfull.is_disk_full(exc):
            raise
        print(f"fusebench: error: {diskfull.message(exc)}", file=sys.stderr)
        return 2
    except deadline.StopRequested as exc:
        print(f"fusebench: stopped: {exc}; the work in flight finished; re-run the same command to resume", file=sys.stderr)
        return deadline.EXIT_CODE
    except KeyboardInterrupt:
        print("fusebench: interrupted; re-run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    finally:
        console.teardown(display)


INTERRUPTED = 130


def entry() -> None:
    """The `fusebench` console script and `python -m fusebench`: `main()`, then the process's exit.

    An interrupted command leaves at once (`os._exit`, after flushing the logs and streams) instead of
    through the interpreter's shutdown. When the interrupt lands inside `datasets.load_dataset`, a
    thread of pyarrow's stays blocked and the shutdown waits for it forever (4 of 20 interrupted loads
    of the ESC-50 parquet hung at exit here; `gpu_bundle.sh`'s suite then outlived its time box until
    the SIGKILL). Everything a run keeps is on disk by then: records, the journal and the seed store are
    written atomically as they happen, and the cell pool and scratch folders are closed on the way out
    of `main()`."""
    code = main()
    if code == INTERRUPTED:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
