"""AST-style log-mel filter bank features, one segment per second (method-facts §9).

AST computes `kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)` with a 25 ms window, then normalises with the
AudioSet statistics as `(x - mean) / (2 * std)`. We do the same over the whole clip, then cut it into one fixed-size
segment per second so that second t of audio lines up with frame t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass(frozen=True)
class FbankParams:
    sample_rate: int = 16000  # AST's rate; other rates are resampled first
    num_mel_bins: int = 128  # AST: 128 mel bins
    frame_shift_ms: float = 10.0  # AST: 10 ms hop
    frame_length_ms: float = 25.0  # kaldi default window, as AST
    frames_per_second: int = 100  # segment length F per second (1 s / 10 ms); shorter tails are zero-padded
    norm_mean: float = AUDIOSET_MEAN  # AudioSet statistics used by AST
    norm_std: float = AUDIOSET_STD


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (sinc interpolation)."""
    if orig_rate == new_rate:
        return waveform.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), orig_rate,
                       new_rate).numpy()


def fbank_per_second(waveform: np.ndarray, sample_rate: int, seconds: int, params: FbankParams) -> np.ndarray:
    """(T, F, M) normalised fbank: T one-second segments of F frames by M mel bins.

    The clip's audio is padded with zeros or cut to exactly `seconds` seconds before the fbank (AVSBench crops to the
    clip length as well). The fbank of the whole clip is computed once, so windows straddling second boundaries see
    real neighbouring audio; frame k belongs to second floor(k * shift / 1 s).
    """
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wav = resample(waveform, sample_rate, params.sample_rate)
    n = seconds * params.sample_rate
    wav = np.pad(wav, (0, max(0, n - len(wav))))[:n]
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    fb = kaldi.fbank(
        x - x.mean(), htk_compat=True, sample_frequency=params.sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=params.num_mel_bins, dither=0.0, frame_shift=params.frame_shift_ms,
        frame_length=params.frame_length_ms,
    )  # (frames, M)
    fb = (fb - params.norm_mean) / (2 * params.norm_std)
    out = np.zeros((seconds, params.frames_per_second, params.num_mel_bins), dtype=np.float32)
    frames_per_s = int(round(1000 / params.frame_shift_ms))
    for t in range(seconds):
        # The last second has fewer complete windows (98 of 100); its tail stays 0 = the AudioSet mean.
        seg = fb[t * frames_per_s: t * frames_per_s + params.frames_per_second].numpy()
        out[t, : len(seg)] = seg
    return out
