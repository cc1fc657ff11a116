"""Encoding checkpoints: an interrupted encode resumes after the chunks it saved, and the features
equal an uninterrupted encode's (bench/features/partial.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fusebench.config import catalog
from fusebench.data.builders import build_tables
from fusebench.features import extract
from fusebench.features.cache import FeatureCache
from fusebench.features.encoders import Features
from fusebench.features.extract import _encode_with_progress, encode_task
from fusebench.features.partial import EncodeCheckpoint
from tests.killpoint import LoggedPopen

REPO = Path(__file__).resolve().parents[1]


class Encoder:
    """Row-wise and deterministic: item i → [i, 2i, ...] tokens; counts what it encoded; can fail."""

    def __init__(self, fail_at_call: int | None = None) -> None:
        self.calls, self.items, self.fail_at_call = 0, 0, fail_at_call

    def encode(self, chunk: list[int]) -> Features:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt  # what a Ctrl-C or the end of a session does mid-encode
        self.items += len(chunk)
        x = torch.tensor(chunk, dtype=torch.float32)[:, None] * torch.arange(1, 5)
        return Features(x, x[:, None, :].repeat(1, 3, 1))


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(extract, "ENCODE_CHUNK", 10)


def test_an_interrupted_encode_resumes_after_its_saved_chunks(tmp_path, small_chunks, caplog):
    values = list(range(95))
    whole = _encode_with_progress(Encoder(), values, "k", "whole").features
    ckpt = EncodeCheckpoint(tmp_path / "key.partial", every_s=0.0)
    with pytest.raises(KeyboardInterrupt):
        _encode_with_progress(Encoder(fail_at_call=5), values, "k", "first", ckpt)
    assert len(list(ckpt.folder.glob("*.pt"))) == 4  # chunks 0-39 saved, one file per chunk at every_s=0
    again = Encoder()
    with caplog.at_level(logging.INFO, logger="fusebench.features.extract"):
        enc = _encode_with_progress(again, values, "k", "second", EncodeCheckpoint(ckpt.folder, 0.0))
    feats = enc.features
    assert again.items == 55 and enc.resumed == 40 and enc.items == 95  # encoded now: items 40..94 only
    assert "resuming after 40 of 95 items" in caplog.text
    assert torch.equal(feats.pooled, whole.pooled) and torch.equal(feats.tokens, whole.tokens)


def test_a_bad_or_missing_part_is_encoded_again(tmp_path, small_chunks, caplog):
    values = list(range(60))
    whole = _encode_with_progress(Encoder(), values, "k", "whole").features
    ckpt = EncodeCheckpoint(tmp_path / "key.partial", every_s=0.0)
    with pytest.raises(KeyboardInterrupt):
        _encode_with_progress(Encoder(fail_at_call=6), values, "k", "first", ckpt)
    parts = sorted(ckpt.folder.glob("*.pt"))
    assert [p.stem for p in parts] == ["0000000000", "0000000010", "0000000020", "0000000030", "0000000040"]
    parts[2].write_bytes(parts[2].read_bytes()[:100])  # truncated: parts 2.. are not trusted
    parts[4].unlink()
    again = Encoder()
    with caplog.at_level(logging.WARNING):
        enc = _encode_with_progress(again, values, "k", "second", EncodeCheckpoint(ckpt.folder, 0.0))
    feats = enc.features
    assert enc.resumed == 20 and again.items == 40
    assert "0000000020.pt is unreadable" in caplog.text
    assert torch.equal(feats.pooled, whole.pooled)


def test_an_unwritable_checkpoint_folder_warns_once_and_the_encode_finishes(tmp_path, small_chunks, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ckpt = EncodeCheckpoint(blocker / "key.partial", every_s=0.0)
    with caplog.at_level(logging.WARNING):
        enc = _encode_with_progress(Encoder(), list(range(50)), "k", "x", ckpt)
    assert enc.resumed == 0 and len(enc.features.pooled) == 50
    assert caplog.text.count("encode checkpoints not written") == 1 and ckpt.folder is None


class SlowEncoder(Encoder):
    def encode(self, chunk: list[int]) -> Features:
        time.sleep(0.05)
        return super().encode(chunk)


def test_the_seconds_of_saved_chunks_count_in_the_resumed_encode(tmp_path, small_chunks):
    """Rates and phase times must include the interrupted run's encoding, not only the resumed part."""
    ckpt = EncodeCheckpoint(tmp_path / "key.partial", every_s=0.0)
    slow = SlowEncoder(fail_at_call=7)
    with pytest.raises(KeyboardInterrupt):
        _encode_with_progress(slow, list(range(80)), "k", "first", ckpt)
    enc = _encode_with_progress(Encoder(), list(range(80)), "k", "second", EncodeCheckpoint(ckpt.folder, 0.0))
    assert enc.resumed == 60 and enc.seconds >= 6 * 0.05  # six saved chunks of at least 50 ms each


def test_checkpoints_are_written_at_the_configured_interval(tmp_path, small_chunks):
    ckpt = EncodeCheckpoint(tmp_path / "key.partial", every_s=3600.0)
    with pytest.raises(KeyboardInterrupt):
        _encode_with_progress(Encoder(fail_at_call=5), list(range(95)), "k", "x", ckpt)
    assert not ckpt.folder.exists()  # nothing due within an hour


def _worker_script(data: Path, cfg_dir: Path, cache: Path) -> str:
    """Encode the toy task with 8-item chunks and stop (SIGSTOP) at the start of the third chunk, when
    exactly two checkpoints are saved: the test kills it there. A kill timed by polling the cache
    could land after the whole first split if the test process was not scheduled for ~2 s."""
    return textwrap.dedent(
        f"""
        import os, signal, torch
        os.environ["FUSEBENCH_CONFIG_DIR"] = {str(cfg_dir)!r}
        os.environ["FUSEBENCH_ENCODE_CHECKPOINT_S"] = "0"
        from fusebench.config import catalog
        from fusebench.data.builders import build_tables
        from fusebench.features import extract
        from fusebench.features.cache import FeatureCache
        from fusebench.features.encoders import HFTextEncoder
        extract.ENCODE_CHUNK = 8
        plain, calls = HFTextEncoder.encode, []
        def encode(self, chunk):
            calls.append(len(chunk))
            if len(calls) == 3:  # chunks 0-7 and 8-15 of the first split are checkpointed
                os.kill(os.getpid(), signal.SIGSTOP)
            return plain(self, chunk)
        HFTextEncoder.encode = encode
        cfg = catalog.get_dataset("toy")
        from pathlib import Path
        extract.encode_task(cfg, build_tables(cfg, Path({str(data)!r}), "full"), FeatureCache(Path({str(cache)!r})),
                            torch.device("cpu"), views={{"neural"}})
        """
    )


def _state(pid: int) -> str:
    """The process state letter of /proc/PID/stat (T: stopped); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@pytest.mark.slow
def test_kill_9_mid_encode_then_resume_equals_an_uninterrupted_encode(synthetic_bundle, tmp_path, monkeypatch, caplog):
    data, cfg_dir = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    cache_dir = tmp_path / "cache"
    proc = LoggedPopen([sys.executable, "-c", _worker_script(data, cfg_dir, cache_dir)], tmp_path / "encode.log", cwd=REPO,
                       env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while _state(proc.pid) != "T":  # stopped itself mid-split
            assert proc.poll() is None, f"the encode ended before its stop point: {proc.output_tail(2000)}"
            assert time.monotonic() < deadline, "the encode did not reach its stop point within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = list(cache_dir.glob("features/toy/*.partial/*.pt"))
    monkeypatch.setattr(extract, "ENCODE_CHUNK", 8)
    cfg = catalog.get_dataset("toy")
    tables = build_tables(cfg, data, "full")
    with caplog.at_level(logging.INFO, logger="fusebench.features.extract"):
        resumed = encode_task(cfg, tables, FeatureCache(cache_dir), torch.device("cpu"), views={"neural"})
    assert f"resuming after {len(saved) * 8} of" in caplog.text
    assert not list(cache_dir.glob("features/toy/*.partial"))  # removed once the entries are stored
    fresh = encode_task(cfg, tables, FeatureCache(tmp_path / "fresh"), torch.device("cpu"), views={"neural"})
    for split in ("train", "val", "test"):
        assert torch.equal(resumed.splits[split].pooled["neural"], fresh.splits[split].pooled["neural"])
        assert torch.equal(resumed.splits[split].tokens["neural"], fresh.splits[split].tokens["neural"])
    first_split_items = len(saved) * 8
    assert first_split_items == 16 < len(tables.splits["train"])  # killed mid-split, after two saved chunks


def test_overlapping_parts_of_two_writers_are_used_and_gaps_still_stop_the_resume(tmp_path, small_chunks):
    """Two writers of one key with different checkpoint intervals: parts 0-19 and 20-39 from one, 10-19
    and 10-29 from the other (same chunk boundaries). The load used to stop at the first part that did
    not start where the covered range ended (10 after 0-19) and lost 20-39; now a covered part is
    skipped, an overlapping one contributes its uncovered rows and their share of its seconds."""
    values = list(range(60))
    whole = _encode_with_progress(Encoder(), values, "k", "whole").features
    rows = lambda a, b: Features(whole.pooled[a:b], whole.tokens[a:b])  # noqa: E731
    folder = tmp_path / "key.partial"
    ckpt = EncodeCheckpoint(folder, every_s=0.0)
    ckpt.save(0, rows(0, 20), 2.0)
    ckpt.save(10, rows(10, 30), 4.0)  # the other writer: 10-19 covered, 20-29 new
    ckpt.save(20, rows(20, 40), 6.0)  # 20-29 covered by now, 30-39 new
    ckpt.save(50, rows(50, 60), 1.0)  # after a gap (40-49 missing): not used
    parts, seconds = EncodeCheckpoint(folder, 0.0).load()
    assert [len(p.pooled) for p in parts] == [20, 10, 10] and seconds == pytest.approx(2.0 + 4.0 / 2 + 6.0 / 2)
    again = Encoder()
    enc = _encode_with_progress(again, values, "k", "resume", EncodeCheckpoint(folder, 0.0))
    assert enc.resumed == 40 and again.items == 20  # only 40..59 encoded now
    assert torch.equal(enc.features.pooled, whole.pooled) and torch.equal(enc.features.tokens, whole.tokens)
    assert 7.0 <= enc.seconds < 8.0  # each saved row's seconds counted once, plus this run's encoding


def test_a_part_whose_values_do_not_match_its_checksum_is_skipped_not_used(tmp_path, small_chunks, caplog):
    values = list(range(40))
    whole = _encode_with_progress(Encoder(), values, "k", "whole").features
    folder = tmp_path / "key.partial"
    ckpt = EncodeCheckpoint(folder, every_s=0.0)
    ckpt.save(0, Features(whole.pooled[:10], whole.tokens[:10]), 1.0)
    ckpt.save(10, Features(whole.pooled[10:20], whole.tokens[10:20]), 1.0)
    blob = torch.load(folder / "0000000010.pt", weights_only=True)
    blob["pooled"] = blob["pooled"] + 1  # well-formed, wrong values
    torch.save(blob, folder / "0000000010.pt")
    with caplog.at_level(logging.WARNING):
        enc = _encode_with_progress(Encoder(), values, "k", "resume", EncodeCheckpoint(folder, 0.0))
    assert enc.resumed == 10 and "0000000010.pt does not match its checksum" in caplog.text
    assert torch.equal(enc.features.pooled, whole.pooled)


def _run_script(data: Path, cfg_dir: Path, cache: Path, out: Path) -> str:
    """`fusebench run --suite toy` whose neural encoder takes 1 s per 8-item chunk and stops itself
    (SIGSTOP) at the start of the third chunk of the first split, two chunks checkpointed."""
    return textwrap.dedent(
        f"""
        import os, signal, sys, time
        os.environ["FUSEBENCH_CONFIG_DIR"] = {str(cfg_dir)!r}
        os.environ["FUSEBENCH_CACHE"] = {str(cache)!r}
        os.environ["FUSEBENCH_ENCODE_CHECKPOINT_S"] = "0"
        from fusebench.cli import main
        from fusebench.features import extract
        from fusebench.features.encoders import HFTextEncoder
        extract.ENCODE_CHUNK = 8
        plain, calls = HFTextEncoder.encode, []
        def encode(self, chunk):
            calls.append(len(chunk))
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(1.0)
            return plain(self, chunk)
        HFTextEncoder.encode = encode
        sys.exit(main(["run", "--suite", "toy", "--data-dir", {str(data)!r}, "--out", {str(out)!r}, "-q"]))
        """
    )


@pytest.mark.slow
def test_a_run_killed_mid_encode_keeps_the_saved_chunks_seconds_in_its_encoding_phase(
        synthetic_bundle, tmp_path, monkeypatch):
    """run.json `phases.encoding` of a resumed run = the resumed process's encoding wall time + the
    seconds of the chunks the killed process saved (>= 2 s here). Before, the killed process's
    encoding was lost from `phases` (it was saved only once a dataset's encode finished)."""
    from fusebench.cli import main
    from fusebench.run import runner

    data, cfg_dir = synthetic_bundle
    cache, out = tmp_path / "cache", tmp_path / "run"
    proc = LoggedPopen([sys.executable, "-c", _run_script(data, cfg_dir, cache, out)], tmp_path / "run.log", cwd=REPO,
                       env=os.environ.copy())
    try:
        deadline = time.monotonic() + 180
        while _state(proc.pid) != "T":
            assert proc.poll() is None, f"the run ended before its stop point: {proc.output_tail(2000)}"
            assert time.monotonic() < deadline, "the run did not reach its stop point within 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = list(cache.glob("features/toy/*.partial/*.pt"))
    saved_s = sum(torch.load(p, weights_only=True)["seconds"] for p in saved)
    assert len(saved) == 2 and saved_s >= 2.0
    assert "encoding" not in (json.loads((out / "run.json").read_text()).get("phases") or {})  # lost with the kill

    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    monkeypatch.setenv("FUSEBENCH_CACHE", str(cache))
    monkeypatch.setenv("FUSEBENCH_ENCODE_CHECKPOINT_S", "0")
    monkeypatch.setattr(extract, "ENCODE_CHUNK", 8)
    walls: list[float] = []
    plain = runner.encode_task

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return plain(*args, **kwargs)
        finally:
            walls.append(time.perf_counter() - t0)

    monkeypatch.setattr(runner, "encode_task", timed)
    assert main(["run", "--suite", "toy", "--data-dir", str(data), "--out", str(out), "-q"]) == 0
    phases = json.loads((out / "run.json").read_text())["phases"]
    assert len(walls) == 1
    assert phases["encoding"] >= walls[0] + saved_s - 0.01  # the killed process's saved chunks counted
    assert phases["encoding"] < walls[0] + saved_s + 1.0  # and only once
