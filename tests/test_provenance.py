"""Which source a record or throughput JSON came from (bench/results/provenance.py).

A checkout names its git revision; a wheel installed from git names the commit pip recorded; a plain
wheel (scripts/gpu_bundle.sh installs one on the GPU machine) names the commit its launcher declares
in $FUSEBENCH_SOURCE_REVISION. The H200 run's throughput JSONs had `git_sha: null` and no other revision.
"""

from __future__ import annotations

import torch

from fusebench.measure.throughput import envelope
from fusebench.results import provenance


def test_a_checkout_names_its_git_revision(monkeypatch):
    monkeypatch.setenv("FUSEBENCH_SOURCE_REVISION", "declared-but-ignored")
    sha = provenance.git_sha()
    assert sha is not None and len(sha.removesuffix("-dirty")) == 40  # the tests run from a checkout
    assert provenance.source_revision() == sha  # the checkout wins over a declaration


def test_a_plain_wheel_takes_the_declared_revision(monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: None)
    monkeypatch.setattr(provenance, "installed_revision", lambda: None)
    monkeypatch.setenv("FUSEBENCH_SOURCE_REVISION", " 0123abcd\n")
    assert provenance.source_revision() == "0123abcd"
    monkeypatch.setenv("FUSEBENCH_SOURCE_REVISION", "")
    assert provenance.source_revision() is None  # nothing known: null, never a guess


def test_the_throughput_json_names_its_source_revision(monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: None)
    monkeypatch.setattr(provenance, "installed_revision", lambda: None)
    monkeypatch.setenv("FUSEBENCH_SOURCE_REVISION", "feedbeef")
    doc = envelope(torch.device("cpu"))
    assert doc["source_revision"] == "feedbeef" and doc["git_sha"] is None
