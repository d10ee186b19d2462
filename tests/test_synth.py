"""Tests of the synthetic data generator (`pcas_cli/synth.py`) and the shared scene helpers (`pcas_cli/scenes.py`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from pcas_cli import scenes, synth
from pcas_cli.config import load_config
from pcas_cli.datasets import open_dataset
from pcas_cli.errors import PcasError

REPO = Path(__file__).resolve().parents[1]
SR = synth.SAMPLE_RATE
TINY = synth.SynthConfig(videos=8, val_videos=2, test_videos=2, image_size=32, seed=3, workers=1)


@pytest.fixture(scope="module")
def tiny_clips() -> list[synth.Clip]:
    return list(synth.generate(TINY))


# ------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_clips_and_another_seed_does_not():
    a = synth.generate_clip(TINY, "train", 1, "v2")
    b = synth.generate_clip(TINY, "train", 1, "v2")
    for f in ("frames", "waveform", "masks", "visible", "labels", "mask_valid"):
        assert np.array_equal(getattr(a.sample, f), getattr(b.sample, f)), f
    assert np.array_equal(a.schedule, b.schedule)
    c = synth.generate_clip(dataclasses.replace(TINY, seed=4), "train", 1, "v2")
    assert not np.array_equal(a.sample.frames, c.sample.frames)
    assert not np.array_equal(a.sample.waveform, c.sample.waveform)
    d = synth.generate_clip(TINY, "train", 2, "v2")  # another clip index: another clip
    assert not np.array_equal(a.sample.frames, d.sample.frames)


def test_same_seed_gives_byte_identical_files(tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, videos=3, val_videos=1, test_videos=1)
    trees = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # same relative default root: synth.json/README are identical too
        root = synth.run(cfg)
        assert root == Path("data/raw/synth-avss")
        trees.append({p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    assert trees[0].keys() == trees[1].keys() and len(trees[0]) > 20
    assert all(trees[0][k] == trees[1][k] for k in trees[0])


def test_worker_processes_do_not_change_the_data():
    cfg = dataclasses.replace(TINY, videos=5, val_videos=1, test_videos=0)
    serial = list(synth.generate(cfg))
    parallel = list(synth.generate(dataclasses.replace(cfg, workers=2)))
    assert [c.sample.clip_id for c in serial] == [c.sample.clip_id for c in parallel] and len(serial) == 6
    for a, b in zip(serial, parallel):
        assert np.array_equal(a.sample.frames, b.sample.frames)
        assert np.array_equal(a.sample.waveform, b.sample.waveform)
        assert np.array_equal(a.sample.masks, b.sample.masks)


def test_more_videos_keep_the_existing_clips():
    small = synth.generate_clip(dataclasses.replace(TINY, videos=4), "train", 0, "ms3")
    big = synth.generate_clip(dataclasses.replace(TINY, videos=40), "train", 0, "ms3")
    assert np.array_equal(small.sample.frames, big.sample.frames)


# ------------------------------------------------------------------------------------------------ ground truth


def test_masks_mark_exactly_the_sounding_objects(tiny_clips):
    for clip in tiny_clips:
        s, sched, ids = clip.sample, clip.schedule, clip.class_ids
        assert len(set(ids.tolist())) == len(ids), "two objects of one class in a clip"
        assert sched.shape == (s.num_frames, len(ids))
        for t in range(s.num_frames):
            mask, vis = s.masks[t], s.visible[t]
            assert set(np.unique(mask[mask > 0]).tolist()) == set(ids[sched[t]].tolist())
            assert set(np.unique(vis[vis > 0]).tolist()) == set(ids.tolist())  # every object stays visible
            fg = mask > 0
            assert np.array_equal(mask[fg], vis[fg])  # a sounding pixel is that object's visible pixel
            for c in ids[sched[t]]:  # ... and all its visible pixels are marked
                assert np.array_equal(mask == c, vis == c)
        assert np.array_equal(np.flatnonzero(s.labels) + 1, np.sort(ids[sched.any(axis=0)]))


def test_objects_move_between_seconds(tiny_clips):
    moved = [not np.array_equal(c.sample.visible[0], c.sample.visible[-1]) for c in tiny_clips]
    assert np.mean(moved) > 0.8


def test_frames_and_audio_shapes(tiny_clips):
    subsets = {c.sample.subset for c in tiny_clips}
    assert subsets <= {"v1s", "v1m", "v2"} and len(subsets) >= 2
    for c in tiny_clips:
        s = c.sample
        T = {"v1s": 5, "v1m": 5, "v2": 10}[s.subset]
        assert s.frames.shape == (T, 32, 32, 3) and s.frames.dtype == np.uint8
        assert s.waveform.shape == (T * SR,) and s.waveform.dtype == np.float32 and np.abs(s.waveform).max() <= 1
        assert s.masks.dtype == np.uint8 and s.labels.shape == (8,) and s.labels.sum() >= 1
        if s.subset == "v1s":
            assert c.schedule[:, c.schedule.any(axis=0)].shape[1] == 1  # single source
    assert [c.sample.split for c in tiny_clips] == ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    assert len({c.sample.clip_id for c in tiny_clips}) == 12


def test_layout_mask_rule():
    s4 = synth.generate_clip(TINY, "train", 0, "s4").sample
    out = synth.to_layout_sample(s4)
    assert out.mask_valid.tolist() == [True, False, False, False, False]
    assert np.array_equal(out.masks[0], s4.masks[0]) and not out.masks[1:].any()
    assert synth.to_layout_sample(synth.generate_clip(TINY, "val", 0, "s4").sample).mask_valid.all()
    assert synth.to_layout_sample(synth.generate_clip(TINY, "train", 0, "v1m").sample).mask_valid.all()
    assert synth.to_layout_sample(synth.generate_clip(TINY, "train", 0, "v1s").sample).mask_valid.sum() == 1


def test_s4_has_one_class_per_clip_and_distractors_at_the_expected_rate():
    # Three objects, never a silent second, one source: every frame has exactly 1 sounding + 2 silent objects.
    cfg = dataclasses.replace(TINY, layout="s4", objects_per_frame=(3, 3), p_silent_frame=0.0,
                              object_scale=(0.1, 0.12), videos=6)
    clips = list(synth.generate(cfg))
    for c in clips:
        assert c.sample.labels.sum() == 1
        assert (c.schedule.sum(axis=1) == 1).all()
    stats = synth.compute_stats([c.sample for c in clips])
    assert stats["objects_per_frame"]["mean"] == 3
    assert stats["silent_distractor_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["multi_source_frame_share"] == 0 and stats["silent_frame_share"] == 0


def test_silent_multi_source_and_distractor_frames_all_occur(tiny_clips):
    stats = synth.compute_stats([c.sample for c in tiny_clips])
    assert stats["silent_frame_share"] > 0
    assert stats["multi_source_frame_share"] > 0
    assert stats["silent_distractor_share"] > 0.2


# -------------------------------------------------------------------------------------------------- schedule


def test_schedule_rates_match_the_configuration():
    rng = np.random.default_rng(0)
    scheds = [scenes.sample_schedule(rng, 3, 10, True, p_silent=0.2, p_multi=0.5, max_sources=3, p_repeat=0.3)
              for _ in range(600)]
    n_src = np.concatenate([s.sum(axis=1) for s in scheds])  # sources per second
    assert np.mean(n_src == 0) == pytest.approx(0.2, abs=0.03)
    assert np.mean(n_src[n_src > 0] >= 2) == pytest.approx(0.5, abs=0.04)
    assert n_src.max() == 3
    changes = np.mean([(s[1:] != s[:-1]).any(axis=1).mean() for s in scheds])
    assert changes > 0.4  # which objects sound changes from second to second


def test_schedule_single_source_and_degenerate_cases():
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = scenes.sample_schedule(rng, 3, 5, False, p_silent=0.5, p_multi=1.0, max_sources=3, p_repeat=0.0)
        assert not s[:, 1:].any() and s[:, 0].any()  # only object 0, at least once
    s = scenes.sample_schedule(rng, 2, 5, True, p_silent=1.0, p_multi=0.0, max_sources=2, p_repeat=0.0)
    assert s.sum() == 1  # all silent is forced to one sounding second
    s = scenes.sample_schedule(rng, 3, 6, True, p_silent=0.0, p_multi=1.0, max_sources=2, p_repeat=1.0)
    assert (s == s[0]).all() and s[0].sum() == 2  # always repeats; multi-source capped at 2
    assert scenes.sample_schedule(rng, 0, 5, True, 0.1, 0.1, 2, 0.1).shape == (5, 0)


def test_plan_subsets_counts_and_mask_rule():
    rng = np.random.default_rng(0)
    plan = scenes.plan_subsets("avss", 7, (0.4, 0.3, 0.3), rng)  # exact 2.8 / 2.1 / 2.1 -> 3 / 2 / 2
    assert sorted(plan) == ["v1m", "v1m", "v1s", "v1s", "v1s", "v2", "v2"]
    assert scenes.plan_subsets("s4", 3, (1, 0, 0), rng) == ["s4"] * 3
    assert scenes.mask_valid("v1s", "train", 5).tolist() == [True, False, False, False, False]
    assert scenes.mask_valid("v2", "train", 10).all() and scenes.mask_valid("s4", "test", 5).all()
    assert scenes.clip_uid("synth", "val", 3, "v2", 10) == "synth-val-0003_0_10000"
    assert scenes.clip_uid("synth", "val", 3, "v1m", 5) == "synth-val-0003"


# ----------------------------------------------------------------------------------------------------- audio


def test_gate_envelope_is_zero_outside_active_seconds():
    env = scenes.gate_envelope(np.array([True, False, True, True]), sample_rate=10, ramp_s=0.2)  # 2-sample ramps
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.array([0.5, 1.5]) / 2)  # 0.146, 0.854
    assert np.allclose(env[0:2], ramp) and np.allclose(env[2:8], 1) and np.allclose(env[8:10], ramp[::-1])
    assert not env[10:20].any()
    assert np.allclose(env[20:22], ramp) and np.allclose(env[22:38], 1) and np.allclose(env[38:40], ramp[::-1])


def test_mix_at_snr_levels():
    rng = np.random.default_rng(0)
    noise = scenes.colored_noise(rng, 3 * SR, 1.0)
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    src = np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR)[None]  # (1, S)
    sched = np.array([[False], [True], [False]])
    mix, noise_rms = scenes.mix_at_snr(src, sched, np.zeros(1), noise, snr_db=20.0, sample_rate=SR)
    assert noise_rms == pytest.approx(0.01)
    np.testing.assert_allclose(mix[:SR], 0.01 * noise[:SR] / 1.0, rtol=1e-5, atol=1e-7)  # silent second = noise
    sec = mix[SR:2 * SR] - 0.01 * noise[SR:2 * SR]
    assert np.sqrt(np.mean(sec[200:-200] ** 2)) == pytest.approx(0.1, rel=0.01)  # 0 dB source at ref_rms 0.1


def test_silent_seconds_hold_the_noise_floor():
    cfg = dataclasses.replace(TINY, snr_db=(20.0, 20.0))
    checked = 0
    for i in range(6):
        clip = synth.generate_clip(cfg, "train", i, "v2")
        w = clip.sample.waveform.reshape(-1, SR).astype(np.float64)  # (T, sr)
        rms = np.sqrt(np.mean(w ** 2, axis=1))
        sounding = clip.schedule.any(axis=1)
        assert np.all(rms[sounding] > 2.5 * clip.noise_rms)
        if (~sounding).any():
            assert np.all((rms[~sounding] > 0.4 * clip.noise_rms) & (rms[~sounding] < 2.0 * clip.noise_rms))
            checked += 1
    assert checked >= 1


def _log_band_features(x: np.ndarray) -> np.ndarray:
    """Mean and std over 25 ms frames of the log energy in 24 log-spaced bands."""
    frames = x.reshape(-1, 400) * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    f = np.fft.rfftfreq(400, 1 / SR)
    edges = np.geomspace(40, 8000, 25)
    bands = np.stack([power[:, (f >= a) & (f < b)].sum(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    lb = np.log(bands + 1e-8)
    return np.concatenate([lb.mean(0), lb.std(0)])


def test_class_sounds_are_distinguishable():
    """A nearest-centroid classifier on standardised log spectra separates the clean class sounds."""
    rng = np.random.default_rng(0)
    n_classes, per_class = len(synth.CLASSES), 12
    X = np.stack([_log_band_features(synth.class_sound(c, 1, rng)) for c in range(n_classes) for _ in range(per_class)])
    y = np.repeat(np.arange(n_classes), per_class)
    train = np.arange(len(y)) % 2 == 0
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
    Z = (X - mu) / sd
    centroids = np.stack([Z[train & (y == c)].mean(0) for c in range(n_classes)])
    pred = np.argmin(((Z[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == y[~train]) >= 0.9
    assert np.mean(pred[y[~train] < 8] == y[~train][y[~train] < 8]) >= 0.9  # the default 8 classes


def test_each_class_sound_varies_within_the_class():
    a = synth.class_sound(0, 1, np.random.default_rng(0))
    b = synth.class_sound(0, 1, np.random.default_rng(1))
    assert a.shape == (SR,) and not np.allclose(a, b)
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------------- images


def test_paste_clips_at_the_border():
    canvas = np.zeros((3, 3, 1), np.uint8)
    patch = np.full((2, 2, 1), 7, np.uint8)
    alpha = np.array([[True, True], [False, True]])
    foot = scenes.paste(canvas, patch, alpha, top=-1, left=-1)
    assert canvas[..., 0].tolist() == [[7, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert foot.tolist() == [[True, False, False], [False, False, False], [False, False, False]]
    assert not scenes.paste(canvas, patch, alpha, top=5, left=0).any()  # fully outside: nothing


def test_visible_footprints_and_label_maps():
    back = np.array([[1, 1, 0]], bool)
    front = np.array([[0, 1, 1]], bool)
    vis = scenes.visible_footprints(np.stack([back, front]))
    assert vis[0].tolist() == [[True, False, False]] and vis[1].tolist() == [[False, True, True]]
    mask, visible = scenes.label_maps(vis, [4, 2], np.array([True, False]))
    assert mask.tolist() == [[4, 0, 0]] and visible.tolist() == [[4, 2, 2]]


# ---------------------------------------------------------------------------------------------------- config


def test_stage_toml_mirrors_the_defaults():
    assert load_config(synth.SynthConfig, "synth", REPO / "stages" / "synth.toml") == synth.SynthConfig()


def test_split_sizes_and_bad_configs():
    assert synth.split_sizes(synth.SynthConfig()) == {"train": 240, "val": 60, "test": 60}
    assert synth.split_sizes(synth.SynthConfig(videos=10)) == {"train": 10, "val": 2, "test": 2}
    assert synth.output_root(synth.SynthConfig(layout="s4")) == Path("data/raw/synth-s4")
    for bad in (dict(num_classes=7), dict(num_classes=13), dict(objects_per_frame=(0, 2)),
                dict(objects_per_frame=(3, 2)), dict(p_silent_frame=1.5), dict(snr_db=(10.0, 0.0))):
        with pytest.raises(PcasError):
            synth.check_config(dataclasses.replace(TINY, **bad))


def test_impossible_placement_is_a_user_error():
    cfg = dataclasses.replace(TINY, object_scale=(0.5, 0.5), min_visible_fraction=1.0)  # always cut by the border
    with pytest.raises(PcasError, match="cannot place"):
        synth.generate_clip(cfg, "train", 0, "v1s")
    with pytest.raises(PcasError, match="pixels"):
        synth.check_config(dataclasses.replace(TINY, image_size=32, object_scale=(0.05, 0.1)))


# ------------------------------------------------------------------------------------------- stats, disk round trip


STATS_KEYS = {"clips", "frames", "masked_frames", "clips_per_split", "clips_per_subset", "objects_per_frame",
              "sources_per_frame", "silent_distractor_share", "frames_with_distractor_share",
              "multi_source_frame_share", "silent_frame_share", "mask_foreground_fraction", "per_class"}


def test_stats_keys_and_hand_counted_values(tiny_clips):
    samples = [c.sample for c in tiny_clips]
    stats = synth.compute_stats(samples)
    assert set(stats) == STATS_KEYS
    frames = sum(s.num_frames for s in samples)
    n_obj = sum(len(c.class_ids) * c.sample.num_frames for c in tiny_clips)
    n_src = sum(int(c.schedule.sum()) for c in tiny_clips)
    assert stats["clips"] == 12 and stats["frames"] == frames == stats["masked_frames"]
    assert stats["objects_per_frame"]["mean"] == pytest.approx(n_obj / frames, abs=1e-4)
    assert sum(stats["objects_per_frame"]["histogram"].values()) == frames
    assert stats["silent_distractor_share"] == pytest.approx(1 - n_src / n_obj, abs=1e-4)
    fg = np.mean([(m > 0).mean() for s in samples for m in s.masks])
    assert stats["mask_foreground_fraction"] == pytest.approx(fg, abs=1e-4)
    assert list(stats["per_class"]) == list(synth.class_names(TINY))
    assert sum(v["clips"] for v in stats["per_class"].values()) == sum(int(s.labels.sum()) for s in samples)
    assert {k for k, _ in synth.stats_rows(stats)} >= {"multi-source frames", "class drum"}
    assert synth.compute_stats([])["clips"] == 0


def test_avss_round_trip_through_the_writer_and_reader(tmp_path, tiny_clips):
    root = synth.run(dataclasses.replace(TINY, root=tmp_path / "avss"))
    ds = open_dataset("avss", root)
    assert ds.info.classes == synth.class_names(TINY)
    expected = {c.sample.clip_id: synth.to_layout_sample(c.sample) for c in tiny_clips}
    read = []
    for split in ("train", "val", "test"):
        for s in ds.iter_split(split):
            e = expected[s.clip_id]
            assert (s.split, s.subset) == (e.split, e.subset)
            assert np.array_equal(s.labels, e.labels)
            assert np.array_equal(s.mask_valid, e.mask_valid) and np.array_equal(s.masks, e.masks)
            assert np.array_equal(s.visible, e.visible)
            assert np.abs(s.frames.astype(int) - e.frames).mean() < 6  # JPEG
            np.testing.assert_allclose(s.waveform, e.waveform, atol=2 / 32768)  # PCM_16
            read.append(s)
    assert len(read) == 12
    on_disk = synth.compute_stats(root)
    assert on_disk == synth.compute_stats(read, ds.info.classes) == synth.compute_stats(list(expected.values()))
    assert set(synth.load_stats(root)) == STATS_KEYS
    assert (root / "README.md").read_text().startswith("# Synthetic audio-visual")


@pytest.mark.parametrize("layout", ["s4", "ms3"])
def test_binary_layouts_round_trip(tmp_path, layout):
    cfg = dataclasses.replace(TINY, layout=layout, videos=4, val_videos=1, test_videos=1)
    clips = {c.sample.clip_id: c for c in synth.generate(cfg)}
    root = synth.run(dataclasses.replace(cfg, root=tmp_path / layout))
    ds = open_dataset(layout, root)
    n = 0
    for split in ("train", "val", "test"):
        for s in ds.iter_split(split):
            c = clips[s.clip_id]
            e = synth.to_layout_sample(c.sample)
            names = [ds.info.classes[i] for i in np.flatnonzero(s.labels)]
            assert names == [synth.CLASSES[i].name for i in np.flatnonzero(e.labels)]
            assert np.array_equal(s.mask_valid, e.mask_valid)
            assert np.array_equal(s.masks, (e.masks > 0).astype(np.uint8))  # binary on disk
            if layout == "s4":
                assert len(names) == 1
                assert s.mask_valid.tolist() == ([True] + [False] * 4 if split == "train" else [True] * 5)
            n += 1
    assert n == 6
    stats = synth.compute_stats(root)
    assert stats["clips"] == 6 and stats["objects_per_frame"] is None  # S4/MS3 keep no visible maps


@pytest.mark.slow
def test_default_data_set_is_fast_and_has_the_documented_statistics(tmp_path):
    start = time.perf_counter()
    root = synth.run(synth.SynthConfig(root=tmp_path / "synth-avss"))
    assert time.perf_counter() - start < 60
    stats = synth.load_stats(root)
    assert stats["clips"] == 360
    assert 0.3 < stats["silent_distractor_share"] < 0.7
    assert 0.15 < stats["multi_source_frame_share"] < 0.45
    assert 0.08 < stats["silent_frame_share"] < 0.25
