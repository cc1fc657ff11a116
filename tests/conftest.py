"""Shared fixtures: an isolated feature cache, generated tiny models and a generated dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Hypothesis runs the same examples on every run and machine (docs/testing.md): derandomized (the
# examples are a function of the test, not of a random seed), no example database (a failure seen
# once on one machine does not make the next run differ), no per-example deadline and no "too slow"
# health check (both are wall-clock bounds that a loaded 2-core runner trips). A failure prints the
# falsifying example; `HYPOTHESIS_PROFILE=explore` searches fresh random examples on purpose.
settings.register_profile(
    "deterministic", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", settings.get_profile("deterministic"), derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session encodes into its own cache: tests never depend on a warm ~/.cache."""
    root = tmp_path_factory.mktemp("fusebench-cache")
    os.environ["FUSEBENCH_CACHE"] = str(root)
    return root


@pytest.fixture(autouse=True)
def no_global_state_leaks():
    """What one test changes in the process stays with it (docs/testing.md): `fusebench worker` run
    in-process left torch at 1 intra-op thread for every later test, and each CLI call left its
    root-logger level and stderr handler (bound to that test's captured stderr) behind, so a test's
    numbers and logs depended on which tests ran before it."""
    import logging

    import optuna
    import torch

    from fusebench.core import deadline, progress

    # a --stop-after deadline one test left in the environment stopped every later run, and its
    # StopRequested (a KeyboardInterrupt) ended the whole pytest session, 666 tests in (CI, stop 26)
    stop_at = os.environ.pop(deadline.ENV, None)
    threads, root = torch.get_num_threads(), logging.getLogger()
    level, verbosity = root.level, optuna.logging.get_verbosity()
    optuna_root = logging.getLogger("optuna")  # a CLI call routes optuna's records through the root (console.py)
    optuna_propagate, optuna_handlers = optuna_root.propagate, list(optuna_root.handlers)
    yield
    optuna_root.propagate = optuna_propagate
    optuna_root.handlers = optuna_handlers
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    file_only = logging.getLogger("fusebench.progress.file")
    for logger in (root, file_only):
        for handler in [h for h in logger.handlers if getattr(h, "_fusebench", False) or logger is file_only]:
            logger.removeHandler(handler)
            handler.close()
    file_only.propagate = True
    root.setLevel(level)
    optuna.logging.set_verbosity(verbosity)
    progress.set_backend(progress.NullBackend())
    if stop_at is None:
        os.environ.pop(deadline.ENV, None)
    else:
        os.environ[deadline.ENV] = stop_at


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and spin under a loaded machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real bundle. Integration tests need it; its absence is an error, not a skip."""
    from fusebench.core.paths import resolve_data_root

    return resolve_data_root()


WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "the", "a", "was", "is", "very"]


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT with a 20-token vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def synthetic_bundle(tmp_path: Path, tiny_text_model: Path) -> tuple[Path, Path]:
    """A generated parquet dataset (text + label + group) and a config dir describing it in YAML only."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    rows = []
    for i in range(120):
        label = i % 2
        words = rng.choice(WORDS[:3] if label else WORDS[3:6], size=4).tolist() + rng.choice(WORDS[6:], size=3).tolist()
        rows.append({"text": " ".join(words), "y": label, "src": i // 3, "score": float(label + rng.normal(0, 0.3))})
    df = pd.DataFrame(rows)
    df.iloc[:90].to_parquet(data / "toy_train.parquet")
    df.iloc[90:].to_parquet(data / "toy_test.parquet")
    cfg = tmp_path / "cfg"
    (cfg / "suites").mkdir(parents=True)
    (cfg / "toy.yaml").write_text(
        f"""name: toy
task: classification
builder: parquet
description: generated toy sentiment
citation: none
num_classes: 2
metrics: [accuracy, auroc]
main_metric: accuracy
data:
  path: toy
  files: {{train: toy_train.parquet, test: toy_test.parquet}}
  label: y
  group: src
  val_fraction: 0.2
views:
  lexical: {{column: text, encoder: tfidf, modality: text, options: {{components: 8, min_df: 1}}}}
  neural: {{column: text, encoder: "hf:{tiny_text_model}", modality: text, options: {{max_length: 16, tokens: 8}}}}
sizes:
  small: {{train: 60, val: 20, test: 20}}
"""
    )
    (cfg / "suites" / "toy.yaml").write_text(
        """name: toy
description: generated
datasets: [toy]
strategies: [concat, unimodal, majority]
size: small
trials: 2
seeds: 2
epochs: 3
patience: 2
patience_steps: 0
min_steps: 12
batch_size: 16
"""
    )
    return tmp_path / "data", cfg


@pytest.fixture()
def sigint_as_in_a_terminal():
    """SIGINT handled by Python's default handler in this process (and so at SIG_DFL in the processes it
    starts), whatever the tests were started with: a background job of a non-interactive shell (`cmd &`
    in a script, as `nohup … &` runs lowest.sh) starts with SIGINT ignored, which `interrupt.handling`
    then keeps ignored on purpose, and the Ctrl-C tests would test nothing (they failed that way)."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
