"""Feature cache and provenance faults: bad entries, read-only caches, stale inputs (docs/reliability.md)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from fusebench.cli import main
from fusebench.core import filehash
from fusebench.core.errors import ConfigError, DataError, UsageError
from fusebench.data.manifest import file_sha256
from fusebench.features.cache import FeatureCache
from fusebench.features.encoders import Features
from fusebench.features.identity import encoder_identity


def _feats() -> Features:
    return Features(torch.randn(5, 4), torch.randn(5, 3, 4).half())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "well_formed_other_values", "no_checksum"])
def test_bad_cache_entry_is_named_removed_and_recomputed(tmp_path: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("d", "k", _feats(), {})
    path = cache.path("d", "k")
    if damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        blob = torch.load(path, weights_only=True)
        blob["pooled"] = torch.randn_like(blob["pooled"])
        if damage == "no_checksum":
            del blob["sha256"]
        torch.save(blob, path)
    with caplog.at_level(logging.WARNING):
        assert cache.get("d", "k") is None
    assert str(path) in caplog.text and not path.exists() and cache.bad == [str(path)]
    cache.put("d", "k", _feats(), {})
    assert cache.get("d", "k") is not None


def test_read_only_complete_cache_serves_and_does_not_write(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    feats = _feats()
    cache.put("d", "k", feats, {})
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user who can write read-only folders (root): covered by the CLI test below")
        got = cache.get("d", "k")
        assert got is not None and torch.equal(got.pooled, feats.pooled)
        cache.put("d", "other", feats, {})  # warns, does not raise
        assert not cache.path("d", "other").exists()
    finally:
        for p in [tmp_path, *tmp_path.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_put_into_an_unwritable_cache_warns_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = FeatureCache(blocker)  # every write fails, as in a read-only cache, even for root
    with caplog.at_level(logging.WARNING):
        cache.put("d", "k", _feats(), {})
    assert "not writable" in caplog.text and cache.writes == []


def test_cache_pointing_at_a_file_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    monkeypatch.setenv("FUSEBENCH_CACHE", str(blocker))
    from fusebench.core.paths import cache_root

    with pytest.raises(UsageError, match="FUSEBENCH_CACHE"):
        cache_root()
    assert main(["run", "--datasets", "imdb", "--strategies", "concat", "--out", str(tmp_path / "o")]) == 2
    assert "FUSEBENCH_CACHE" in capsys.readouterr().err


def test_encoder_identity_fills_defaults_and_rejects_bad_types() -> None:
    a = encoder_identity("tfidf", {"components": 8})
    b = encoder_identity("tfidf", {"components": 8, "min_df": 2})  # min_df's default, written out
    assert a == b and a["options"]["min_df"] == 2 and a["code"] and a["libraries"]["torch"]
    assert a != encoder_identity("tfidf", {"components": 8, "min_df": 1})
    with pytest.raises(ConfigError, match=r"views.x.options.tokens: '8' is not an integer"):
        encoder_identity("logmel", {"tokens": "8"}, "views.x.options")
    with pytest.raises(ConfigError, match="unknown key"):
        encoder_identity("logmel", {"tokenz": 8}, "views.x.options")


def test_data_file_changed_under_manifest_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "x.parquet"
    f.write_bytes(b"0123456789" * 100)
    digest = filehash.sha256_file(f)
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"files": [{"path": "data/d/x.parquet", "sha256": digest,
                                                                  "bytes": 1000}]}))
    assert file_sha256(tmp_path, "d/x.parquet") == digest
    data = bytearray(f.read_bytes())
    data[500] ^= 1  # one flipped bit; size unchanged
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"d/x.parquet.*MANIFEST.json"):
        file_sha256(tmp_path, "d/x.parquet")
    f.write_bytes(bytes(data[:700]))  # truncated
    with pytest.raises(DataError, match="x.parquet"):
        file_sha256(tmp_path, "d/x.parquet")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"files": [{"path": 3}]}'])
def test_bad_manifest_is_exit_2_naming_it(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "MANIFEST.json").write_text(text)
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 2
    assert "MANIFEST.json" in capsys.readouterr().err


def test_changed_data_without_manifest_recomputes_and_says_so(synthetic_bundle, monkeypatch, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import pandas as pd

    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    args = ["run", "--datasets", "toy", "--strategies", "majority", "--size", "small", "--seeds", "1",
            "--data-dir", str(data)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "run.json").read_text())["data"]["toy"]["fingerprint"]
    path = data / "toy" / "toy_train.parquet"
    df = pd.read_parquet(path)
    df.iloc[0, df.columns.get_loc("text")] = "awful awful awful"
    df.to_parquet(path)
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "run.json").read_text())["data"]["toy"]["fingerprint"]
    assert first != second
    assert "inputs changed (revision" in caplog.text and "recomputed" in caplog.text


def test_hf_path_that_is_not_a_model_is_exit_2(synthetic_bundle, monkeypatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data, cfg = synthetic_bundle
    text = (cfg / "toy.yaml").read_text()
    start = text.index('encoder: "hf:') + len('encoder: "hf:')
    end = text.index('"', start)
    (cfg / "toy.yaml").write_text(text[:start] + str(tmp_path) + text[end:])
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    assert main(["run", "--datasets", "toy", "--strategies", "majority", "--size", "small", "--seeds", "1",
                 "--data-dir", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"hf:{tmp_path}" in err and "Traceback" not in err
