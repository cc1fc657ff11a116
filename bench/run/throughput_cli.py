"""The `fusebench throughput` command line: its arguments and handler (the measurements are in
`measure.throughput`, `measure.timing` and `measure.seed_batching`, imported when the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusebench.core.errors import UsageError


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_arguments(thr: argparse.ArgumentParser) -> None:
    thr.add_argument("--strategies", default="all", help="comma-separated names ('unimodal:text' allowed) or 'all'")
    thr.add_argument("--batch-sizes", default="1,64,256", help="comma-separated batch sizes (default 1,64,256)")
    shp = thr.add_mutually_exclusive_group()
    shp.add_argument("--dataset", help="shape the synthetic inputs like this dataset's encoded (cached) features")
    shp.add_argument("--dims", help="synthetic shapes NAME=DxT,... (default text=384x32,image=1280x9,audio=128x16)")
    thr.add_argument("--size", default="smoke", help="dataset size with --dataset (default smoke)")
    thr.add_argument("--num-classes", type=int, default=10, help="classes of the synthetic task (with --dims)")
    thr.add_argument("--data-dir", help="data root (with --dataset)")
    thr.add_argument("--overhead", action="store_true", help="also measure harness/bare-loop training samples/s ratios")
    thr.add_argument("--overhead-repeats", type=int, default=5, help="interleaved harness/bare runs per strategy (default 5)")
    thr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    thr.add_argument("--threads", type=int, help="CPU threads (default: $FUSEBENCH_TRAIN_THREADS, else 1, as in training)")
    thr.add_argument("--repetitions", type=int, default=30, help="timed repetitions per measurement (default 30)")
    thr.add_argument("--warmup", type=int, default=5, help="untimed warm-up passes (default 5)")
    thr.add_argument("--out", help="write the figures: FILE.json (with a device/versions envelope) or FILE.csv")
    thr.add_argument("--encoders", default="frozen", help="frozen (cached features, default) or a fine-tuning mode "
                     "(last:N, full): time the whole model, real MiniLM + EfficientNet-Lite0 towers under each strategy")
    thr.add_argument("--max-length", type=int, default=32, help="text tokens per example with --encoders (default 32)")
    thr.add_argument("--seed-batching", metavar="K,K,...",
                     help="also time K evaluation seeds trained batched vs one after another (e.g. 1,3,5,10)")
    thr.add_argument("--trial-batching", metavar="B,B,...",
                     help="also measure training B trial configurations (per-member lr/weight decay) batched vs "
                          "one after another, e.g. 1,3,5,10")


def command(args: argparse.Namespace) -> int:
    """`fusebench throughput`; an in-process caller (tests, notebooks) gets its torch thread count back."""
    from fusebench.run.runner import threads_restored

    with threads_restored():
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    import torch

    from fusebench.measure import throughput as tp
    from fusebench.measure.timing import device_name
    from fusebench.run.runner import resolve_device, train_threads
    from fusebench.run.selection import selected_strategy
    from fusebench.strategies import STRATEGIES

    if args.out:  # before the measurement, not after it
        from fusebench.core.io import check_writable_file

        check_writable_file(Path(args.out), "--out")
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or train_threads())
    names = STRATEGIES.names() if args.strategies == "all" else list(_split(args.strategies))
    for n in names:
        selected_strategy(n)
    try:
        sizes = [int(b) for b in _split(args.batch_sizes)]
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1 or args.repetitions < 1 or args.warmup < 0:
        raise UsageError("--batch-sizes need positive integers, --repetitions >= 1, --warmup >= 0")
    if args.encoders != "frozen":
        return _finetune(args, names, sizes, device)
    if args.dataset:
        shapes = tp.shapes_from_dataset(args.dataset, args.size, args.data_dir, device)
    elif args.dims:
        shapes = tp.parse_dims(args.dims, args.num_classes)
    else:
        shapes = tp.DEFAULT_SHAPES
    print(f"device: {device_name(device)} (torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"{torch.get_num_threads()} CPU thread(s))")
    print(f"inputs: synthetic, {shapes.source}: {shapes.describe()}")
    print(f"protocol: {args.warmup} warm-up + {args.repetitions} timed passes, inputs rotated, median samples/s; "
          f"p50/p95: one batch's latency")
    rows = tp.inference_table(names, sizes, device, shapes, repetitions=args.repetitions, warmup=args.warmup)
    print(tp.format_table(rows))
    measured = {r.strategy.partition(":")[0] for r in rows}
    for n in names:
        if n.partition(":")[0] not in measured:
            print(f"{n}: skipped, needs more modalities than {shapes.tokens.modalities}")
    overhead = []
    if args.overhead:
        print(f"\nharness overhead: training samples/s of bench.train vs a bare AdamW loop, same batches "
              f"(median of {args.overhead_repeats} interleaved runs each)")
        for n in names:
            info = STRATEGIES.get(n.partition(":")[0])
            if not info.trainable:
                continue
            try:
                o = tp.overhead_ratio(n, device, shapes, repeats=args.overhead_repeats)
            except UsageError as exc:
                print(f"{n:24s} skipped: {exc}")
                continue
            overhead.append(o)
            print(f"{o.strategy:24s} harness {o.harness_samples_per_s:10.0f}  bare {o.bare_samples_per_s:10.0f}  "
                  f"ratio {o.ratio:.3f}")
    batching: dict[str, Any] = {}
    if args.seed_batching:
        batching["seed_batching"] = _seed_batching(names, args.seed_batching, device)
    if args.trial_batching:
        batching["trial_batching"] = _seed_batching(names, args.trial_batching, device, trials=True)
    if args.out:
        protocol = {"warmup": args.warmup, "repetitions": args.repetitions, "batch_sizes": sizes,
                    "overhead_repeats": args.overhead_repeats if args.overhead else 0}
        tp.write_output(Path(args.out), rows, overhead, device, shapes, protocol, extra=batching)
        print(f"fusebench: wrote {args.out}")
    return 1 if any(r.error and r.throughput is None for r in rows) else 0


def _seed_batching(names: list[str], spec: str, device: Any, trials: bool = False) -> list[dict[str, Any]]:
    """Print (and return, for --out) the batched-vs-sequential rows, measured on `device`."""
    import dataclasses

    from fusebench.measure.seed_batching import measure_seed_batching, measure_trial_batching
    from fusebench.strategies import STRATEGIES

    flag = "trial-batching" if trials else "seed-batching"
    try:
        members = [int(k) for k in _split(spec)]
    except ValueError:
        raise UsageError(f"--{flag} must be comma-separated integers, got {spec!r}") from None
    if not members or min(members) < 1:
        raise UsageError(f"--{flag} needs positive integers, got {spec!r}")
    what = "B trial configurations (own lr/weight decay)" if trials else "K seeds"
    print(f"\n{flag.replace('-', ' ')}: member-samples/s training {what} batched vs one after another "
          "(1024 generated rows, 3 epochs, dropout 0)")
    measure = measure_trial_batching if trials else measure_seed_batching
    letter = "B" if trials else "K"
    out: list[dict[str, Any]] = []
    for n in names:
        info = STRATEGIES.get(n.partition(":")[0])
        if not info.trainable:
            continue
        measured = measure(n.partition(":")[0], members, device=device)
        out += [dataclasses.asdict(r) for r in measured]
        rows = {(r.members, r.mode): r for r in measured}
        for k in members:
            seq, bat = rows[(k, "sequential")], rows[(k, "batched")]
            note = "" if bat.batched or k == 1 else f"  (fell back: {bat.reason[:60]})"
            print(f"{n:24s} {letter}={k:<3d} sequential {seq.samples_per_s:9.0f}  batched {bat.samples_per_s:9.0f}  "
                  f"speed-up {bat.samples_per_s / seq.samples_per_s:5.2f}×{note}")
    return out


def _finetune(args: argparse.Namespace, names: list[str], sizes: list[int], device: Any) -> int:
    """`--encoders last:N|full`: the whole fine-tuned model's train/inference samples/s, its peak memory
    and the encoder/fusion split of the time (bench/measure/finetune_throughput.py)."""
    import dataclasses
    import json

    from fusebench.core.encmode import EncoderMode
    from fusebench.core.io import atomic_write_bytes
    from fusebench.measure import finetune_throughput as ft
    from fusebench.measure.throughput import envelope
    from fusebench.measure.timing import device_name
    from fusebench.strategies import STRATEGIES

    try:
        mode = EncoderMode.parse(args.encoders)
    except ValueError as exc:
        raise UsageError(f"--encoders: {exc}") from None
    if mode.frozen:
        raise UsageError("--encoders frozen is the default path; name last:N or full")
    print(f"device: {device_name(device)}; encoders {mode}: all-MiniLM-L6-v2 ({args.max_length} tokens) + "
          f"EfficientNet-Lite0 (160 px), random inputs; {args.warmup} warm-up + {args.repetitions} timed steps, medians")
    rows = []
    for n in names:
        info = STRATEGIES.get(n.partition(":")[0])
        if not info.trainable or info.per_modality or info.min_modalities > 2:
            print(f"{n}: skipped (fine-tuning throughput fuses text + image; needs a trainable two-view strategy)")
            continue
        for b in sizes:
            try:
                rows.append(ft.measure_finetune(info.name, mode, b, device, max_length=args.max_length,
                                                repetitions=args.repetitions, warmup=args.warmup))
            except Exception as exc:  # out of memory or a failing strategy: a row with its error, the sweep goes on
                rows.append(ft.FineTuneThroughput(f"{info.name}{mode.suffix()}", str(mode), b, float("nan"),
                                                  float("nan"), {}, {}, float("nan"), float("nan"), "", 0, 0,
                                                  device_name(device), "", False, f"{type(exc).__name__}: {exc}"[:300]))
    print(ft.format_rows(rows))
    if args.out:
        doc = {**envelope(device), "encoders": str(mode), "max_length": args.max_length,
               "protocol": {"warmup": args.warmup, "repetitions": args.repetitions, "batch_sizes": sizes},
               "finetune": [dataclasses.asdict(r) for r in rows]}
        atomic_write_bytes(Path(args.out), json.dumps(doc, indent=2, default=str).encode())
        print(f"fusebench: wrote {args.out}")
    return 1 if any(r.error for r in rows) else 0
