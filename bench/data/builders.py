"""Builders turn a dataset config and the data root into train/val/test tables.

Each table is a Hugging Face `datasets.Dataset` with one column per view input, `label`,
`cluster` (string id of the unit test examples are not independent within: a Flickr8k image, an
FSDD recording, an ESC-50 source file, an IMDB review; the statistics resample clusters) and
(where the task has one) `group`. Builders are registered by name; the generic `parquet` builder
covers any parquet dataset with a label column, so adding such a dataset needs only YAML.
Row limits (smoke subsets) are applied to source rows with a pinned seed before any pairing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from sklearn.decomposition import PCA

from fusebench.config.loader import DatasetConfig, SplitSizes
from fusebench.core.errors import ConfigError, DataError
from fusebench.core.filehash import source_version
from fusebench.core.paths import scratch_dir
from fusebench.core.registry import Registry
from fusebench.data.audio import decode_audio, fit_length
from fusebench.data.classes import drop_sparse_classes
from fusebench.data.manifest import file_sha256
from fusebench.data.splits import SplitFractions, stratified_group_split
from fusebench.data.validate import check_tables

SPLITS = ("train", "val", "test")
SUBSET_SEED = 0  # pinned: smoke subsets are the same rows on every machine


@dataclass(frozen=True)
class TaskTables:
    """The built splits of a task plus a fingerprint of everything they were built from."""

    splits: dict[str, datasets.Dataset]
    fingerprint: str
    sources: dict[str, str]  # data file → sha256
    classes: tuple[int, ...] | None = None  # when classes were dropped: the original label of each new label
    excluded_classes: dict[str, str] = dataclasses.field(default_factory=dict)  # original label → why dropped

    def num_classes(self, declared: int) -> int:
        """Classes the model must output: the YAML's `num_classes`, less any dropped class."""
        return declared if self.classes is None else len(self.classes)

    def original_label(self, label: object) -> str:
        """A (possibly remapped) label as the data file spells it, for logs and run.json."""
        return str(label) if self.classes is None else str(self.classes[int(label)])  # type: ignore[call-overload]


Builder = Callable[[DatasetConfig, Path, SplitSizes], TaskTables]
BUILDERS: Registry[Builder] = Registry("builder")


def _params(cls: type, cfg: DatasetConfig) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg.data) - known)
    if unknown:
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: unknown key(s) data.{unknown} for builder "
                          f"{cfg.builder!r}; valid keys: {sorted(known)}")
    try:
        return cls(**cfg.data)
    except TypeError as exc:
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data section invalid for builder {cfg.builder!r}: {exc}") from None


def _resolve(root: Path, folder: str, patterns: tuple[str, ...], cfg: DatasetConfig) -> list[str]:
    rels: list[str] = []
    for pat in patterns:
        found = sorted(p.relative_to(root).as_posix() for p in (root / folder).glob(pat))
        if not found:
            raise DataError(
                f"datasets_cfg/{cfg.name}.yaml: no file matches {folder}/{pat} under the data root {root}. "
                f"Run `fusebench data check` or point --data-dir/FUSEBENCH_DATA at the bundle."
            )
        rels += found
    return rels


def code_version() -> str:
    """sha256 (12 hex) of the data package's source: a builder change (pairing, splits, decoding)
    changes every fingerprint and so every feature-cache key built on it."""
    return source_version(Path(__file__).parent)


def _fingerprint(cfg: DatasetConfig, sizes: SplitSizes, sources: dict[str, str]) -> str:
    blob = json.dumps(
        {"builder": cfg.builder, "data": cfg.data, "sizes": dataclasses.asdict(sizes), "sources": sources,
         "code": code_version()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_parquet(root: Path, rels: list[str], columns: list[str] | None = None) -> datasets.Dataset:
    import pyarrow.parquet as pq

    rows = 0
    for rel in rels:
        try:
            meta = pq.ParquetFile(root / rel).metadata
            names, rows = meta.schema.to_arrow_schema().names, rows + meta.num_rows
        except Exception as exc:
            raise DataError(f"data file {root / rel}: not a readable parquet file ({type(exc).__name__}: {exc}); "
                            "restore it from the bundle (`fusebench data check`)") from None
        missing = sorted(set(columns or []) - set(names))
        if missing:
            raise DataError(f"data file {root / rel}: no column(s) {missing} (it has {names}); fix the column names "
                            "(data.label, views.*.column) in the dataset YAML")
    if rels and rows == 0:
        raise DataError(f"data file(s) {[str(root / r) for r in rels]}: the split has no rows; check data.files in the "
                        "dataset YAML")
    try:
        return datasets.load_dataset(
            "parquet",
            data_files=[str(root / r) for r in rels],
            split="train",
            columns=columns,
            cache_dir=str(scratch_dir("hf-datasets")),
        )
    except Exception as exc:
        raise DataError(f"data file(s) {[str(root / r) for r in rels]}: cannot be read ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); restore them from the bundle (`fusebench data check`)") from None


def limit_rows(n_rows: int, limit: int | None) -> np.ndarray:
    """Indices of a pinned, seeded subset (all rows, in order, when limit is None or large)."""
    if limit is None or limit >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n_rows)[:limit])


# --------------------------------------------------------------------------------------------
# Generic parquet classification


@dataclass(frozen=True)
class ParquetParams:
    """`data:` section of the generic builder.

    Args:
        path: folder under the data root.
        files: split (train/val/test, or `all`) → glob patterns.
        label: integer label column.
        group: column whose equal values must stay in one split (e.g. `src_file`).
        cluster: column naming each row's cluster for resampling, or a list of columns whose values
            together name it (IMDB: `[label, review_id]`, ids restart per polarity); default: the
            `group` column, else the row's position in its source table.
        columns: extra columns to keep (view inputs are kept automatically).
        val_fraction: share of train used for validation when no val files are given.
        test_fraction: share of `all` used for test when only `all` is given.
            Derived splits are stratified by `label` and grouped by `group` (bench/data/splits.py).
        split_seed: seed of those derived splits (pinned in the config).
        min_groups_per_class: drop, before splitting, every class of 0..num_classes-1 whose rows span
            fewer distinct `group` values (a grouped split cannot put it in train, validation and
            test; 3 = all three possible). The kept classes are renumbered 0..C-1 in their original
            order and the model gets C outputs; run.json lists what was dropped and why. 0 = off.
    """

    path: str
    files: dict[str, Any]
    label: str
    group: str | None = None
    cluster: str | list[str] | tuple[str, ...] | None = None
    columns: tuple[str, ...] = ()
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    min_groups_per_class: int = 0


def _split_off(ds: datasets.Dataset, fraction: float, label: str, group: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) row indices: `fraction` of the rows held out, stratified by `label`, grouped by `group`."""
    parts = stratified_group_split(
        list(ds[label]), list(ds[group]) if group else None, SplitFractions.of(keep=1 - fraction, held=fraction), seed
    )
    return parts["keep"], parts["held"]


@BUILDERS.register("parquet")
def build_parquet(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(ParquetParams, cfg)
    files = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in p.files.items()}
    bad = sorted(set(files) - {"train", "val", "test", "all"})
    if bad or not ({"train", "test"} <= set(files) or "all" in files):
        raise ConfigError(
            f"datasets_cfg/{cfg.name}.yaml: data.files needs train+test (optionally val) or all; got {sorted(files)}"
        )
    cluster_cols = ((p.cluster,) if isinstance(p.cluster, str) else tuple(p.cluster or ())) or ((p.group,) if p.group else ())
    keep = sorted({v.column for v in cfg.views.values()} | {p.label} | set(p.columns) | set(cluster_cols)
                  | ({p.group} if p.group else set()))
    rels = {split: _resolve(root, p.path, pats, cfg) for split, pats in files.items()}
    sources = {r: file_sha256(root, r) for rs in rels.values() for r in rs}
    raw = {split: _read_parquet(root, rs, keep) for split, rs in rels.items()}
    for split, ds in raw.items():
        missing = sorted(set(keep) - set(ds.column_names))
        if missing:
            raise DataError(f"datasets_cfg/{cfg.name}.yaml: columns {missing} not in {rels[split]}; has {ds.column_names}")
    for split, ds in list(raw.items()):
        if cluster_cols:
            ids = [":".join(map(str, vals)) for vals in zip(*(ds[c] for c in cluster_cols))]
        else:
            ids = [f"{split}:{i}" for i in range(len(ds))]
        raw[split] = ds.add_column("_cluster", ids)
    raw, kept, excluded = drop_sparse_classes(cfg, raw, p.label, p.group, p.min_groups_per_class)
    if "all" in raw:
        ds = raw["all"]
        parts = stratified_group_split(list(ds[p.label]), list(ds[p.group]) if p.group else None,
                                       SplitFractions.nested(test=p.test_fraction, val=p.val_fraction), p.split_seed)
        raw = {split: ds.select(parts[split]) for split in SPLITS}
    if "val" not in raw:
        train, val = _split_off(raw["train"], p.val_fraction, p.label, p.group, p.split_seed)
        raw = {"train": raw["train"].select(train), "val": raw["train"].select(val), "test": raw["test"]}
    out = {}
    for split in SPLITS:
        ds = raw[split]
        ds = ds.select(limit_rows(len(ds), getattr(sizes, split)))
        if p.label != "label":
            ds = ds.rename_column(p.label, "label")
        if p.group and p.group != "group":
            ds = ds.add_column("group", list(ds[p.group]))
        if "cluster" in ds.column_names:
            ds = ds.remove_columns("cluster")
        out[split] = ds.rename_column("_cluster", "cluster")
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources, kept, excluded)


# --------------------------------------------------------------------------------------------
# Flickr8k image–text matching


@dataclass(frozen=True)
class ItmParams:
    """Image–caption matching: each image gives one true pair and one mismatched pair.

    Args:
        path / files: parquet shards per official split (train/val/test).
        negatives: `random` (a caption of another image in the same split).
        pairing_seed: pins which caption is the positive and which image gives the negative.
    """

    path: str
    files: dict[str, Any]
    negatives: str = "random"
    pairing_seed: int = 0


@BUILDERS.register("flickr8k_itm")
def build_itm(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(ItmParams, cfg)
    if p.negatives != "random":
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data.negatives={p.negatives!r}; supported: 'random'")
    out, sources = {}, {}
    for i, split in enumerate(SPLITS):
        pats = p.files.get(split)
        if pats is None:
            raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data.files.{split} is required")
        rels = _resolve(root, p.path, (pats,) if isinstance(pats, str) else tuple(pats), cfg)
        sources.update({r: file_sha256(root, r) for r in rels})
        ds = _read_parquet(root, rels, ["image_id", "image_bytes", "captions"])
        ds = ds.select(limit_rows(len(ds), getattr(sizes, split)))
        n = len(ds)
        if n < 2:
            raise DataError(f"{cfg.name}: split {split} has {n} images; matching needs at least 2")
        rng = np.random.default_rng([p.pairing_seed, i])
        captions = list(ds["captions"])
        pos_pick = rng.integers(0, 5, size=n)
        other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the same image
        neg_pick = rng.integers(0, 5, size=n)
        images = list(ds["image_bytes"])
        out[split] = datasets.Dataset.from_dict(
            {
                "image_id": list(ds["image_id"]) * 2,
                "image": images + images,
                "caption": [captions[j][k] for j, k in enumerate(pos_pick)]
                + [captions[o][k] for o, k in zip(other, neg_pick)],
                "label": [1] * n + [0] * n,
                "group": list(range(n)) * 2,
                "cluster": [str(i) for i in ds["image_id"]] * 2,  # both pairs of an image are one cluster
            }
        )
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources)


# --------------------------------------------------------------------------------------------
# AV-MNIST


@dataclass(frozen=True)
class AvMnistParams:
    """AV-MNIST (Vielzeuf et al. 2018, as used by MultiBench), rebuilt from the bundle.

    Recipe: an MNIST digit is paired with an FSDD recording of the same digit, chosen with a
    seeded RNG (pinned by `pairing_seed`). The image loses `pca_energy_removed` of its energy:
    the leading principal components (fitted on MNIST train) that explain that share of the
    variance are projected out. The audio is cut/padded to `audio_samples` at 8 kHz and mixed
    with a random ESC-50 background clip at an SNR drawn uniformly from `snr_db`. FSDD's official
    test recordings (index 0–4) pair with MNIST test; recordings 5–9 pair with the validation
    digits and 10–49 with training, so no recording is shared across splits.
    """

    mnist: str = "mnist/mnist.npz"
    fsdd: str = "fsdd/fsdd.parquet"
    noise: str = "esc50/esc50_fold4_16k.parquet"
    pca_energy_removed: float = 0.75
    pca_fit_rows: int = 10000
    snr_db: tuple[float, float] = (-4.0, 4.0)
    audio_samples: int = 6000
    val_rows: int = 5000
    pairing_seed: int = 0


@BUILDERS.register("avmnist")
def build_avmnist(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(AvMnistParams, cfg)
    for rel in (p.mnist, p.fsdd, p.noise):
        if not (root / rel).is_file():
            raise DataError(f"{cfg.name}: {root / rel} is missing; run `fusebench data check` to see what the bundle holds")
    sources = {r: file_sha256(root, r) for r in (p.mnist, p.fsdd, p.noise)}
    with np.load(root / p.mnist) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    rng = np.random.default_rng(p.pairing_seed)

    # Image degradation: project out the top PCA components holding `pca_energy_removed` of variance.
    flat_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
    fit_rows = rng.permutation(len(flat_train))[: p.pca_fit_rows]
    pca = PCA(random_state=p.pairing_seed).fit(flat_train[fit_rows])
    k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), p.pca_energy_removed) + 1)
    top = pca.components_[:k].astype(np.float32)  # [k, 784]

    def degrade(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
        centred = flat - pca.mean_.astype(np.float32)
        return (centred - centred @ top.T @ top).astype(np.float32)

    fsdd = _read_parquet(root, [p.fsdd], ["digit", "index", "wav_bytes"])
    digits, index = np.asarray(list(fsdd["digit"])), np.asarray(list(fsdd["index"]))
    pools = {"train": index >= 10, "val": (index >= 5) & (index < 10), "test": index < 5}
    noise_ds = _read_parquet(root, [p.noise], ["flac_bytes"])

    perm = rng.permutation(len(x_train))
    source = {
        "train": (x_train, y_train, perm[p.val_rows :]),
        "val": (x_train, y_train, perm[: p.val_rows]),
        "test": (x_test, y_test, np.arange(len(x_test))),
    }
    out: dict[str, datasets.Dataset] = {}
    wav_cache: dict[int, np.ndarray] = {}
    noise_cache: dict[int, np.ndarray] = {}
    for split in SPLITS:
        xs, ys, rows = source[split]
        rows = rows[limit_rows(len(rows), getattr(sizes, split))]
        split_rng = np.random.default_rng([p.pairing_seed, SPLITS.index(split)])
        images = degrade(xs[rows])
        labels = ys[rows].astype(np.int64)
        audio = np.zeros((len(rows), p.audio_samples), dtype=np.float32)
        clusters: list[str] = []  # the FSDD recording: reused by many rows (each MNIST digit is used once)
        for j, digit in enumerate(labels):
            candidates = np.flatnonzero(pools[split] & (digits == digit))
            clip_id = int(split_rng.choice(candidates))
            clusters.append(f"fsdd:{clip_id}")
            if clip_id not in wav_cache:
                wav_cache[clip_id] = fit_length(decode_audio(fsdd[clip_id]["wav_bytes"], 8000)[0], p.audio_samples)
            speech = wav_cache[clip_id]
            noise_id = int(split_rng.integers(len(noise_ds)))
            if noise_id not in noise_cache:
                noise_cache[noise_id] = decode_audio(noise_ds[noise_id]["flac_bytes"], 8000)[0]
            noise_full = noise_cache[noise_id]
            start = int(split_rng.integers(0, len(noise_full) - p.audio_samples))
            noise = noise_full[start : start + p.audio_samples]
            snr = split_rng.uniform(*p.snr_db)
            p_speech = float(np.mean(speech**2)) + 1e-8
            p_noise = float(np.mean(noise**2)) + 1e-8
            audio[j] = speech + noise * np.sqrt(p_speech / (p_noise * 10 ** (snr / 10)))
        out[split] = datasets.Dataset.from_dict(
            {"image": list(images), "audio": list(audio), "label": labels, "cluster": clusters}
        )
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources)


def build_tables(cfg: DatasetConfig, root: Path, size: str) -> TaskTables:
    """Build the splits of `cfg` at the named size (`full` = every row)."""
    if size == "full":
        sizes = SplitSizes()
    elif size in cfg.sizes:
        sizes = cfg.sizes[size]
    else:
        raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: no sizes.{size} entry; has {sorted(cfg.sizes) + ['full']}")
    tables = BUILDERS.get(cfg.builder)(cfg, root, sizes)
    check_tables(cfg, tables.splits)  # content errors are exit 2 naming file, column and row
    return tables
