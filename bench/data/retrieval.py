"""Flickr8k retrieval tables: one row per (image, caption) pair, all 5 captions of every image.

The rows of a split are the gallery and the queries at once: the unique images (one per `group`)
are the image side, every row's caption is the text side, and `group` (the image's index in the
split) says which captions belong to which image. Encoding deduplicates the repeated image bytes,
so an image is encoded once. Sizes (smoke subsets) limit images, not captions: a smoke test split
of 200 images is 200 images × their 1000 captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from fusebench.config.loader import DatasetConfig, SplitSizes
from fusebench.core.errors import ConfigError, DataError
from fusebench.data.builders import (
    BUILDERS,
    SPLITS,
    TaskTables,
    _fingerprint,
    _params,
    _read_parquet,
    _resolve,
    file_sha256,
    limit_rows,
)

CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class RetrievalParams:
    """`data:` section of the `flickr8k_retrieval` builder.

    Args:
        path / files: parquet shards per official split (train/val/test).
    """

    path: str
    files: dict[str, Any]


@BUILDERS.register("flickr8k_retrieval")
def build_retrieval(cfg: DatasetConfig, root: Path, sizes: SplitSizes) -> TaskTables:
    p = _params(RetrievalParams, cfg)
    out, sources = {}, {}
    for split in SPLITS:
        pats = p.files.get(split)
        if pats is None:
            raise ConfigError(f"datasets_cfg/{cfg.name}.yaml: data.files.{split} is required")
        rels = _resolve(root, p.path, (pats,) if isinstance(pats, str) else tuple(pats), cfg)
        sources.update({r: file_sha256(root, r) for r in rels})
        ds = _read_parquet(root, rels, ["image_id", "image_bytes", "captions"])
        ds = ds.select(limit_rows(len(ds), getattr(sizes, split)))
        if len(ds) < 2:
            raise DataError(f"{cfg.name}: split {split} has {len(ds)} images; retrieval needs at least 2")
        ids, images, captions = list(ds["image_id"]), list(ds["image_bytes"]), list(ds["captions"])
        rows: dict[str, list] = {"image_id": [], "image": [], "caption": [], "caption_idx": [], "label": [], "group": []}
        for i, (image_id, image, caps) in enumerate(zip(ids, images, captions)):
            if len(caps) != CAPTIONS_PER_IMAGE or any(not isinstance(c, str) or not c.strip() for c in caps):
                raise DataError(f"{rels}: image {image_id} (row {i}) has captions {caps!r}; "
                                f"expected {CAPTIONS_PER_IMAGE} non-empty strings")
            for j, cap in enumerate(caps):
                rows["image_id"].append(image_id)
                rows["image"].append(image)
                rows["caption"].append(cap)
                rows["caption_idx"].append(j)
                rows["label"].append(1)  # every row is a matching pair
                rows["group"].append(i)
        out[split] = datasets.Dataset.from_dict(rows)
    return TaskTables(out, _fingerprint(cfg, sizes, sources), sources)
