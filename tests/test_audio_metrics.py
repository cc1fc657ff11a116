import io

import numpy as np
import pytest
import soundfile as sf
import torch

from fusebench.core.metrics import METRICS, compute
from fusebench.data.audio import decode_audio, fit_length, log_mel


def test_decode_wav_and_flac_bytes_with_resampling():
    sr = 8000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for fmt in ("WAV", "FLAC"):
        buf = io.BytesIO()
        sf.write(buf, tone, sr, format=fmt, subtype="PCM_16")
        wave, got_sr = decode_audio(buf.getvalue())
        assert got_sr == sr and wave.dtype == np.float32 and np.abs(wave - tone).max() < 1e-3
        up, up_sr = decode_audio(buf.getvalue(), 16000)
        assert up_sr == 16000 and len(up) == 2 * sr


def test_log_mel_puts_a_tone_in_the_right_band():
    sr = 16000
    t = torch.arange(sr) / sr
    low, high = torch.sin(2 * np.pi * 300 * t), torch.sin(2 * np.pi * 4000 * t)
    mel = log_mel(torch.stack([low, high]), sr, n_mels=64)
    assert mel.shape == (2, 101, 64)
    peak_low, peak_high = mel[0].mean(0).argmax(), mel[1].mean(0).argmax()
    assert peak_low < peak_high and peak_low < 20 and peak_high > 40


def test_fit_length():
    assert len(fit_length(np.ones(10, np.float32), 4)) == 4
    padded = fit_length(np.ones(3, np.float32), 5)
    assert padded.tolist() == [1, 1, 1, 0, 0]


def test_metrics_on_known_values():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = compute(["accuracy", "auroc", "macro_f1"], labels, probs)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["auroc"] == pytest.approx(0.75)
    assert 0 <= out["macro_f1"] <= 1
    assert "accuracy" in METRICS and "auroc" in METRICS
