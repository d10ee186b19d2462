from __future__ import annotations

import numpy as np

from pcas_cli.audio import AUDIOSET_MEAN, AUDIOSET_STD, FbankParams, fbank_per_second


def test_fbank_shape_and_alignment():
    sr = 16000
    t = np.arange(3 * sr) / sr
    rng = np.random.default_rng(0)
    wav = 1e-3 * rng.normal(size=3 * sr).astype(np.float32)
    wav[sr:2 * sr] += 0.5 * np.sin(2 * np.pi * 1000 * t[sr:2 * sr])  # only second 1 has a tone
    fb = fbank_per_second(wav, sr, 3, FbankParams())
    assert fb.shape == (3, 100, 128)
    energy = fb[:, 5:90].max(axis=2).mean(axis=1)  # loudest mel bin, averaged over the second's inner frames
    assert energy[1] > energy[0] + 0.5 and energy[1] > energy[2] + 0.5


def test_normalisation_matches_ast():
    import torch
    import torchaudio.compliance.kaldi as kaldi

    rng = np.random.default_rng(0)
    wav = rng.normal(scale=0.1, size=16000).astype(np.float32)
    x = torch.from_numpy(wav)[None]
    ref = kaldi.fbank(x - x.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    ref = (ref - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    fb = fbank_per_second(wav, 16000, 1, FbankParams())
    assert ref.shape[0] == 98  # 1 + (16000 - 400) // 160
    np.testing.assert_allclose(fb[0, :98], ref.numpy(), atol=1e-5)
    assert np.all(fb[0, 98:] == 0)


def test_resamples_other_rates():
    sr = 8000
    t = np.arange(sr) / sr
    wav = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fb = fbank_per_second(wav, sr, 2, FbankParams())  # 1 s of audio padded to 2 s
    assert fb.shape == (2, 100, 128)
    assert fb[0, 10:90].max(axis=1).mean() > fb[1, 10:90].max(axis=1).mean() + 0.5
