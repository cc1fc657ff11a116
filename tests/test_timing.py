"""The throughput protocol on tiny models: repetitions, rotation, percentiles, OOM back-off, peak
memory, FLOPs, the `fusebench throughput` command, training flags and the Pareto table."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fusebench.measure.throughput import (
    DEFAULT_SHAPES,
    as_csv,
    expand_names,
    inference_table,
    overhead_ratio,
    parse_dims,
    synthetic_batch,
)
from fusebench.measure.timing import TimingConfig, flops_per_sample, is_out_of_memory, measure
from fusebench.results.records import Record, Throughput
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.strategies.base import FusionModel, SharedParams
from fusebench.training.loop import TrainConfig, train_model

SPEC = FusionSpec({"a": 8, "b": 4}, {"a": 1, "b": 1}, 3)
CPU = torch.device("cpu")


def _inputs(n: int) -> dict[str, torch.Tensor]:
    return {"a": torch.randn(n, 8), "b": torch.randn(n, 4)}


def test_measure_reports_a_complete_envelope():
    model = STRATEGIES.get("concat").build(SPEC)
    tp = measure(model, _inputs(64), CPU, TimingConfig(warmup=2, repetitions=30, batch_size=32), 123.0)
    assert tp.batch_size == 32 and tp.repetitions == 30 and tp.warmup == 2 and tp.train_samples_per_s == 123.0
    assert tp.infer_samples_per_s > 0 and tp.infer_samples_per_s_bs1 > 0
    assert 0 < tp.latency_ms_p50 <= tp.latency_ms_p95 and 0 < tp.batch_ms_p50 <= tp.batch_ms_p95
    assert tp.peak_mem_kind.startswith("cpu_peak_rss") and tp.peak_mem_mb > 0
    assert tp.timer == "perf_counter" and tp.torch_version == torch.__version__ and tp.oom_backoff == []
    assert tp.device.startswith("cpu:") and tp.cuda_version == torch.version.cuda and tp.error is None


class Recorder(FusionModel):
    """Records the first value of every batch it sees. Missing: n/a."""

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.lin = nn.Linear(8, 3)
        self.seen: list[tuple[int, float]] = []

    def forward(self, inputs):
        x = inputs["a"]
        self.seen.append((x.shape[0], float(x[0, 0])))
        return self.lin(x)


def test_warmup_repetitions_and_rotated_inputs():
    model = Recorder(SPEC, SharedParams())
    inputs = {"a": torch.arange(64.0).repeat_interleave(8).view(64, 8), "b": torch.zeros(64, 4)}
    measure(model, inputs, CPU, TimingConfig(warmup=3, repetitions=30, batch_size=4), 0.0)
    big = [v for bs, v in model.seen if bs == 4]
    one = [v for bs, v in model.seen if bs == 1]
    assert len(big) == 33 and len(one) == 33  # warm-up + timed, at each batch size
    assert len(set(big)) == 16 and len(set(one)) == 33  # every slice of the 64 rows is visited, none twice in a row
    assert all(a != b for a, b in itertools.pairwise(big))


class OomAbove(FusionModel):
    """Raises an out-of-memory error above `limit` rows, like a device that is too small. Missing: n/a."""

    limit = 16
    error: type[Exception] = torch.OutOfMemoryError

    def __init__(self, spec: FusionSpec, params: SharedParams) -> None:
        super().__init__(spec, params)
        self.lin = nn.Linear(8, 3)

    def forward(self, inputs):
        if inputs["a"].shape[0] > self.limit:
            raise self.error("CUDA out of memory (simulated)")
        return self.lin(inputs["a"])


def test_out_of_memory_backs_off_and_records_it():
    model = OomAbove(SPEC, SharedParams())
    tp = measure(model, _inputs(128), CPU, TimingConfig(warmup=1, repetitions=5, batch_size=64), 1.0)
    assert tp.batch_size == 16 and tp.oom_backoff == [64, 32] and tp.error is None
    assert np.isfinite(tp.infer_samples_per_s) and np.isfinite(tp.latency_ms_p95)


def test_out_of_memory_even_at_batch_size_one_is_recorded_not_raised():
    model = OomAbove(SPEC, SharedParams())
    model.limit = 0
    tp = measure(model, _inputs(32), CPU, TimingConfig(warmup=1, repetitions=3, batch_size=8), 1.0)
    assert tp.oom_backoff == [8, 4, 2, 1] and "out of memory" in tp.error
    assert np.isnan(tp.infer_samples_per_s) and np.isnan(tp.latency_ms_p50)


def test_cpu_allocator_failure_counts_as_out_of_memory_other_errors_do_not():
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    model = OomAbove(SPEC, SharedParams())
    model.error = ValueError
    with pytest.raises(ValueError):
        measure(model, _inputs(64), CPU, TimingConfig(warmup=1, repetitions=3, batch_size=32), 1.0)


# Each region runs in a fresh interpreter: the high-water mark is the process's, so in the test
# process anything that lowers its RSS during the region hides the region's peak: a thread an earlier
# test left running that frees memory, or the kernel reclaiming file-backed pages (mapped libraries,
# memory-mapped datasets) under the memory pressure of a loaded machine. Both failed these tests in
# the lowest-versions suite run beside a smoke run (delta 0.0 for a 64 MiB allocation). The child
# also reports how far its file-backed RSS fell during the region; a region disturbed that way is
# measured again (at most 3 times), never accepted.
_REGION = """
import gc, json, sys, torch
from pathlib import Path
from fusebench.measure.timing import PeakMemory

def kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0

class Cycle:
    def __init__(self, mib):
        self.me = self
        self.payload = torch.ones(mib * 2**20 // 4)

case = sys.argv[1]
if case == "cycle":
    gc.disable()  # the collection must happen inside the region, as an automatic one would
    garbage = Cycle(128)
    del garbage
file_before = kb("RssFile")
with PeakMemory(torch.device("cpu")) as pm:
    if case == "cycle":
        gc.collect()  # what an automatic collection at any allocation in the region does
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
file_drop = (file_before - kb("RssFile")) / 1024
with PeakMemory(torch.device("cpu")) as small:
    torch.ones(16)
print(json.dumps({"kind": pm.kind, "delta": pm.delta_mb, "peak": pm.peak_mb, "small": small.delta_mb,
                  "file_drop_mb": file_drop}))
"""


def _region(case: str) -> dict:
    import subprocess

    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", _REGION, case], capture_output=True, text=True, check=True,
                             timeout=300)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["file_drop_mb"] < 16:  # not disturbed by page reclaim
            return result
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="region peak RSS needs /proc/self/clear_refs")
def test_cpu_peak_memory_is_the_measured_regions():
    r = _region("plain")
    if r["kind"] == "cpu_peak_rss_process":
        pytest.skip("this kernel does not allow resetting VmHWM")
    assert r["kind"] == "cpu_peak_rss_region" and r["delta"] >= 48 and r["peak"] >= r["delta"], r
    assert r["small"] < 32, r  # the earlier 64 MiB peak is not carried over


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="region peak RSS needs /proc/self/clear_refs")
def test_garbage_freed_inside_the_region_does_not_hide_its_peak():
    """CI failure (stop 9): a cyclic-GC pass inside the region freed earlier garbage, so RSS fell below
    the reset high-water mark and a 64 MiB allocation showed as a 0 MiB peak. The region now starts
    from a collected heap."""
    r = _region("cycle")
    if r["kind"] == "cpu_peak_rss_process":
        pytest.skip("this kernel does not allow resetting VmHWM")
    assert r["delta"] is not None and r["delta"] >= 48, r


def test_flops_per_sample_counts_the_matmuls():
    model = nn.Linear(8, 3)

    class Wrap(FusionModel):
        """One linear layer on modality a. Missing: n/a."""

        def forward(self, inputs):
            return model(inputs["a"])

    flops = flops_per_sample(Wrap(SPEC, SharedParams()), _inputs(4))
    assert flops == 2 * 8 * 3


def test_throughput_table_and_overhead_ratio_run():
    shapes = parse_dims("a=8x2,b=4x3", num_classes=3)
    rows = inference_table(["concat", "mult", "unimodal"], [1, 8], CPU, shapes, repetitions=3, warmup=1)
    assert [(r.strategy, r.batch_size) for r in rows] == [
        ("concat", 1), ("concat", 8), ("mult", 1), ("mult", 8),
        ("unimodal:a", 1), ("unimodal:a", 8), ("unimodal:b", 1), ("unimodal:b", 8)]
    assert all(r.throughput.infer_samples_per_s > 0 and r.params > 0 and r.error is None for r in rows)
    assert rows[0].flops_per_sample and rows[2].flops_per_sample > rows[0].flops_per_sample
    text = as_csv(rows)
    assert text.splitlines()[0].startswith("strategy,family,input_kind") and len(text.splitlines()) == 9
    o = overhead_ratio("concat", CPU, shapes, n=256, epochs=1, repeats=1)
    assert o.harness_samples_per_s > 0 and o.bare_samples_per_s > 0 and o.ratio > 0 and o.val_seconds > 0


def test_a_strategy_that_fails_is_a_row_not_the_end_of_the_sweep(monkeypatch):
    info = STRATEGIES.get("gmu")

    def broken(spec, params=None):
        raise RuntimeError("cannot build")

    monkeypatch.setattr(type(info), "build", lambda self, spec, params=None: broken(spec) if self.name == "gmu"
                        else self.cls(spec, params or self.params()))
    rows = inference_table(["gmu", "concat"], [4], CPU, parse_dims("a=8,b=4", 3), repetitions=2, warmup=0)
    assert rows[0].error == "RuntimeError: cannot build" and rows[0].throughput is None
    assert rows[1].strategy == "concat" and rows[1].throughput is not None


def test_parse_dims_and_names():
    s = parse_dims("text=384x32, image=1280x9,audio=128")
    assert dict(s.tokens.dims) == {"audio": 128, "image": 1280, "text": 384} and s.tokens.tokens["audio"] == 1
    assert DEFAULT_SHAPES.tokens.tokens == {"audio": 16, "image": 9, "text": 32}
    assert expand_names(["unimodal:text", "concat"], ["audio", "text"]) == [
        ("unimodal:text", "unimodal", ["text"]), ("concat", "concat", ["audio", "text"])]
    from fusebench.core.errors import UsageError

    with pytest.raises(UsageError):
        parse_dims("text=abc")


def test_cli_throughput_writes_json_and_csv(tmp_path, capsys):
    from fusebench.cli import main

    out = tmp_path / "t.json"
    rc = main(["throughput", "--strategies", "concat,majority", "--batch-sizes", "1,4", "--dims", "a=8x2,b=4x2",
               "--repetitions", "2", "--warmup", "1", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "concat" in text and "FLOPs/sample" in text
    data = json.loads(out.read_text())
    assert data["device"].startswith("cpu") and data["torch_version"] == torch.__version__ and "machine" in data
    assert len(data["inference"]) == 4 and data["inference"][0]["throughput"]["repetitions"] == 2
    assert data["protocol"]["batch_sizes"] == [1, 4] and data["inputs"]["tokens"]["dims"] == {"a": 8, "b": 4}
    csv_out = tmp_path / "t.csv"
    assert main(["throughput", "--strategies", "concat", "--batch-sizes", "2", "--dims", "a=8,b=4", "--repetitions", "2",
                 "--device", "cpu", "--out", str(csv_out)]) == 0
    assert pd.read_csv(csv_out).strategy.tolist() == ["concat"]
    assert main(["throughput", "--strategies", "concat", "--batch-sizes", "x"]) == 2


def test_cli_throughput_gives_the_caller_its_threads_back():
    """The command trains on `--threads` (default 1) CPU threads; an in-process caller (a notebook, the
    next test) kept that count after it before."""
    from fusebench.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["throughput", "--strategies", "concat", "--batch-sizes", "2", "--dims", "a=8,b=4",
                     "--repetitions", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_train_flags_and_timed_validation():
    info = STRATEGIES.get("concat")
    spec = FusionSpec({"a": 8, "b": 4}, {"a": 1, "b": 1}, 3)
    data = synthetic_batch(spec, "pooled", 64, CPU)
    for cfg in (TrainConfig(epochs=2, patience=3, batch_size=16),
                TrainConfig(epochs=2, patience=3, batch_size=16, amp_bf16=True)):
        torch.manual_seed(0)
        res = train_model(info.build(spec), data, data, cfg, "accuracy", seed=0)
        assert res.train_samples == 128 and res.train_seconds > 0 and res.val_seconds > 0 and len(res.history) == 2


def test_pareto_table_from_records(tmp_path):
    from fusebench.reports.leaderboard import write_leaderboard

    def rec(name, fam, score, speed, seed):
        return Record(dataset="d", task="t", strategy=name, family=fam, modalities=["a"], seed=seed, status="ok",
                      main_metric_name="accuracy", main_metric=score, metrics={"accuracy": score},
                      throughput=Throughput(10.0, speed, 5.0, 1.0, 2.0, 50.0, "cpu_peak_rss_region", 8, 30),
                      params_count=7, flops_per_sample=1e3)

    records = [rec(n, f, s + 0.001 * k, v, k) for n, f, s, v in
               [("fast", "late", 0.6, 1000.0), ("good", "mid", 0.9, 10.0), ("bad", "early", 0.5, 5.0),
                ("floor", "baseline", 0.1, 1e6)] for k in range(2)]
    write_leaderboard(records, tmp_path)
    table = pd.read_csv(tmp_path / "pareto.csv")
    assert table.strategy.tolist() == ["good", "fast", "bad"]  # best first; baselines left out
    assert table.on_pareto_front.tolist() == [True, True, False]
    assert table.flops_per_sample.tolist() == [1e3] * 3 and (table.train_samples_per_s == 10.0).all()
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.count("## Quality vs throughput (Pareto front)") == 1 and "| `good` |" in md
    assert (tmp_path / "pareto.md").is_file()


def test_run_exposes_amp_and_compile_flags():
    from fusebench.cli import _parser
    from fusebench.run.runner import RunConfig

    args = _parser().parse_args(["run", "--datasets", "d", "--strategies", "concat", "--amp-bf16", "--compile"])
    assert args.amp_bf16 and args.compile
    assert {"amp_bf16", "compile"} <= set(RunConfig.__dataclass_fields__)
    assert {"amp_bf16", "compile"} <= set(TrainConfig.__dataclass_fields__)
