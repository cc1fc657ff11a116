"""Audio decoding (soundfile, no torchaudio/torchcodec) and log-mel features computed with torch."""

from __future__ import annotations

import io
from functools import lru_cache
from math import gcd

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers.audio_utils import mel_filter_bank


def decode_audio(data: bytes, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """WAV/FLAC bytes → mono float32 waveform in [-1, 1] and its sample rate."""
    wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if target_sr is not None and target_sr != sr:
        wave, sr = resample(wave, sr, target_sr), target_sr
    return wave.astype(np.float32), sr


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    g = gcd(sr, target_sr)
    return resample_poly(wave, target_sr // g, sr // g).astype(np.float32)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or centre-crop to exactly n samples."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start : start + n]
    return np.pad(wave, (0, n - len(wave)))


@lru_cache(maxsize=16)
def _mel_basis(n_fft: int, n_mels: int, sr: int) -> torch.Tensor:
    fb = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=20.0,
        max_frequency=sr / 2,
        sampling_rate=sr,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(fb.astype(np.float32))  # [freq, mels]


def log_mel(waves: torch.Tensor, sr: int, n_mels: int = 64, win_ms: float = 25.0, hop_ms: float = 10.0) -> torch.Tensor:
    """`[B, S]` waveforms → `[B, frames, n_mels]` log-mel energies (natural log, floor 1e-6)."""
    win = int(round(sr * win_ms / 1000))
    n_fft = 1 << (win - 1).bit_length()
    hop = int(round(sr * hop_ms / 1000))
    spec = torch.stft(
        waves, n_fft=n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win), return_complex=True
    ).abs().pow(2)  # [B, freq, frames]
    mel = torch.einsum("bft,fm->btm", spec, _mel_basis(n_fft, n_mels, sr))
    return torch.log(mel.clamp_min(1e-6))
