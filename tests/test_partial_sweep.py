"""Abandoned `<key>.partial/` encode checkpoints are removed; live or resumable ones never are
(bench/features/partial_owner.py). Before the sweep, a key change mid-encode or a kill between
storing the entry and removing its checkpoints left the folder behind for good."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusebench.config import catalog
from fusebench.data.builders import build_tables
from fusebench.features import extract
from fusebench.features.cache import FeatureCache
from fusebench.features.encoders import HFTextEncoder
from fusebench.features.partial import EncodeCheckpoint
from fusebench.features.partial_owner import ABANDONED_IDLE_S, claim, sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg_dir = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg_dir))
    monkeypatch.setenv("FUSEBENCH_ENCODE_CHECKPOINT_S", "0")
    monkeypatch.setattr(extract, "ENCODE_CHUNK", 8)
    cfg = catalog.get_dataset("toy")
    return cfg, build_tables(cfg, data, "full")


def _with_max_length(cfg, n: int):
    """The toy task with the neural view's max_length changed: every neural key changes."""
    view = cfg.views["neural"]
    return dataclasses.replace(cfg, views={**cfg.views, "neural": dataclasses.replace(view, options={
        **view.options, "max_length": n})})


def _interrupt_at_call(monkeypatch, n: int) -> None:
    plain, calls = HFTextEncoder.encode, []

    def encode(self, chunk):
        calls.append(len(chunk))
        if len(calls) == n:
            raise KeyboardInterrupt  # a Ctrl-C mid-split: the saved chunks stay for a resume
        return plain(self, chunk)

    monkeypatch.setattr(HFTextEncoder, "encode", encode)


def _age(folder: Path) -> None:
    """Make `folder` look idle for longer than ABANDONED_IDLE_S (nothing written to it since)."""
    past = time.time() - ABANDONED_IDLE_S - 60
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (past, past))


def _interrupted_encode(cfg, tables, cache_dir: Path, monkeypatch) -> None:
    """Encode the neural view until its third chunk, then interrupt it (two chunks saved)."""
    with monkeypatch.context() as m:
        _interrupt_at_call(m, 3)
        with pytest.raises(KeyboardInterrupt):
            extract.encode_task(cfg, tables, FeatureCache(cache_dir), torch.device("cpu"), views={"neural"})


def _partials(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.glob("features/toy/*.partial"))


def test_a_key_change_mid_encode_removes_the_old_keys_partial_folder(toy, tmp_path, monkeypatch, caplog):
    cfg, tables = toy
    cache_dir = tmp_path / "cache"
    _interrupted_encode(cfg, tables, cache_dir, monkeypatch)
    old = _partials(cache_dir)
    assert len(old) == 1 and len(list((cache_dir / "features/toy" / old[0]).glob("*.pt"))) == 2
    assert json.loads((cache_dir / "features/toy" / old[0] / "slot.json").read_text())["slot"] == "train/neural"
    changed = _with_max_length(cfg, 12)  # the config changed before the resume: a new key for every split
    # Another key is not enough: a run at another size or version keys the slot differently and its
    # killed encode will resume (the reviewer's case: a smoke run deleted a killed full run's chunks).
    extract.encode_task(changed, tables, FeatureCache(cache_dir), torch.device("cpu"), views={"neural"})
    assert _partials(cache_dir) == old and len(list((cache_dir / "features/toy" / old[0]).glob("*.pt"))) == 2
    _age(cache_dir / "features/toy" / old[0])  # ...idle for over a week: abandoned
    with caplog.at_level(logging.INFO, logger="fusebench.features.partial_owner"):
        extract.encode_task(_with_max_length(cfg, 10), tables, FeatureCache(cache_dir), torch.device("cpu"),
                            views={"neural"})
    assert _partials(cache_dir) == []
    assert f"removed the abandoned encode checkpoint {cache_dir / 'features/toy' / old[0]}" in caplog.text
    assert "train/neural is keyed" in caplog.text


def test_a_kill_between_storing_the_entry_and_clearing_its_checkpoints_is_swept_on_the_next_hit(
        toy, tmp_path, monkeypatch):
    cfg, tables = toy
    cache_dir = tmp_path / "cache"
    with monkeypatch.context() as m:
        m.setattr(EncodeCheckpoint, "clear", lambda self: None)  # the kill lands right after cache.put
        extract.encode_task(cfg, tables, FeatureCache(cache_dir), torch.device("cpu"), views={"neural"})
    left = _partials(cache_dir)
    assert len(left) == 3  # one per split, each with its saved chunks
    cache = FeatureCache(cache_dir)
    extract.encode_task(cfg, tables, cache, torch.device("cpu"), views={"neural"})
    assert cache.hits == 3 and cache.misses == 0  # nothing encoded again...
    assert _partials(cache_dir) == []  # ...and the leftovers are gone


def test_the_partial_folder_of_a_key_being_resumed_is_kept(toy, tmp_path, monkeypatch):
    """The same key after an interruption: its folder is what the resume reads, not garbage."""
    cfg, tables = toy
    cache_dir = tmp_path / "cache"
    _interrupted_encode(cfg, tables, cache_dir, monkeypatch)
    folder = cache_dir / "features/toy" / _partials(cache_dir)[0]
    key = folder.name.removesuffix(".partial")
    assert sweep(folder.parent, "train/neural", key, None, stored=False) == []
    assert sweep(folder.parent, "val/neural", "other", None, stored=False) == []  # another slot's
    assert len(list(folder.glob("*.pt"))) == 2


_HOLDER = """
import sys
from pathlib import Path
from fusebench.features.partial_owner import claim
fd = claim(Path(sys.argv[1]), "train/neural")
print("held", flush=True)
sys.stdin.read()  # holds the lock until killed
"""


def test_a_folder_held_by_a_live_process_is_kept_until_that_process_dies(tmp_path):
    """Another process (say a run with the old config, still encoding) holds the old key's folder:
    the sweep leaves it; once that process is killed (-9), the next sweep removes it."""
    folder = tmp_path / "toy" / "oldkey.partial"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        (folder / "0000000000.pt").write_bytes(b"saved chunk")
        _age(folder)
        assert sweep(folder.parent, "train/neural", "newkey", None, stored=False) == []
        assert (folder / "0000000000.pt").is_file()
    finally:
        proc.kill()
        proc.wait(10)
    assert sweep(folder.parent, "train/neural", "newkey", None, stored=False) == [folder]
    assert not folder.exists()


def test_a_writer_that_locked_a_swept_folder_takes_a_lock_on_the_new_one(tmp_path):
    """claim() makes sure the lock it holds is on the folder's current lock file: a shared lock on a
    file the sweep unlinked would protect nothing."""
    folder = tmp_path / "k.partial"
    fd = claim(folder, "train/x")
    try:
        assert os.fstat(fd).st_ino == os.stat(folder / ".lock").st_ino
        _age(folder)
        assert sweep(tmp_path, "train/x", "other", None, stored=False) == []  # held: kept
    finally:
        os.close(fd)
    assert sweep(tmp_path, "train/x", "other", None, stored=False) == [folder]
    fd = claim(folder, "train/x")  # made again, locked again
    os.close(fd)
    assert (folder / "slot.json").is_file()


def test_folders_of_older_versions_go_only_when_the_index_names_them_and_they_are_idle(tmp_path):
    """A folder with no slot.json was written by a version that took no lock: removed only when the
    feature index says it was the slot's previous key and nothing in it changed for a week."""
    old, unrelated = tmp_path / "prevkey.partial", tmp_path / "otherkey.partial"
    for folder in (old, unrelated):
        folder.mkdir()
        (folder / "0000000000.pt").write_bytes(b"chunk")
    assert sweep(tmp_path, "train/neural", "newkey", "prevkey", stored=False) == []  # just written
    for folder in (old, unrelated):
        _age(folder)
    assert sweep(tmp_path, "train/neural", "newkey", None, stored=False) == []  # the index knows no previous key
    assert sweep(tmp_path, "train/neural", "newkey", "prevkey", stored=False) == [old]
    assert unrelated.is_dir()
