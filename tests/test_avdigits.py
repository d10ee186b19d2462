"""Tests of the AV-Digits builder (`pcas_cli/avdigits.py`): MNIST handwriting + FSDD speech in AVSBench layouts.

Tests that need the real inputs use a small copy of ../shared/data (a few hundred MNIST images, takes 0-3 of every
FSDD speaker and digit) and are skipped, with the reason, in a clone without ../shared.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from pcas_cli import avdigits as av
from pcas_cli import scenes
from pcas_cli.config import load_config
from pcas_cli.datasets import open_dataset
from pcas_cli.errors import PcasError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MNIST_NPZ = SHARED / "mnist" / "mnist_uint8.npz"
FSDD_DIR = SHARED / "fsdd" / "recordings"
LONG_FILE = "3_lucas_7.wav"  # 1.31 s, one of the 20 FSDD recordings longer than 1 s (take 7: added to the subset)
SR = av.SAMPLE_RATE
needs_data = pytest.mark.skipif(not (MNIST_NPZ.is_file() and FSDD_DIR.is_dir()),
                                reason=f"real inputs not found at {SHARED} (MNIST npz and FSDD recordings); "
                                       "AV-Digits tests need ../shared/data next to the repository")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A small copy of the real inputs: MNIST's first 400 train and 400 test images, FSDD takes 0-3 + one long file."""
    if not (MNIST_NPZ.is_file() and FSDD_DIR.is_dir()):
        pytest.skip(f"real inputs not found at {SHARED}")
    d = tmp_path_factory.mktemp("avdigits-inputs")
    with np.load(MNIST_NPZ) as m:
        np.savez(d / "mnist.npz", x_train=m["x_train"][:400], y_train=m["y_train"][:400],
                 x_test=m["x_test"][:400], y_test=m["y_test"][:400])
    rec = d / "recordings"
    rec.mkdir()
    for p in FSDD_DIR.glob("*.wav"):
        if int(p.stem.split("_")[2]) < 4 or p.name == LONG_FILE:
            shutil.copy(p, rec / p.name)
    return d / "mnist.npz", rec


@pytest.fixture(scope="module")
def tiny(inputs) -> av.AVDigitsConfig:
    mnist, fsdd = inputs
    return av.AVDigitsConfig(mnist=mnist, fsdd=fsdd, videos=6, val_videos=2, test_videos=2, image_size=64, seed=3,
                             workers=1)


@pytest.fixture(scope="module")
def tiny_clips(tiny) -> list[av.Clip]:
    return list(av.generate(tiny))


# ------------------------------------------------------------------------------------------- config and errors


def test_stage_toml_mirrors_the_defaults():
    cfg = load_config(av.AVDigitsConfig, "build-avdigits", REPO / "stages" / "build-avdigits.toml")
    assert cfg == av.AVDigitsConfig()
    assert cfg.mnist == Path("../shared/data/mnist/mnist_uint8.npz") and cfg.test_speakers == ("theo",)
    assert av.split_sizes(cfg) == {"train": 2000, "val": 60, "test": 60}
    assert av.output_root(av.AVDigitsConfig(layout="ms3")) == Path("data/raw/avdigits-ms3")


@pytest.mark.parametrize("bad", [dict(digits_per_clip=(0, 2)), dict(digits_per_clip=(3, 11)),
                                 dict(layout="ms3", digits_per_clip=(1, 1)), dict(test_speakers=()),
                                 dict(p_silent_frame=1.5), dict(snr_db=(10.0, 0.0)), dict(image_size=16),
                                 dict(digit_size=(0.5, 0.3)), dict(stroke_threshold=255)])
def test_bad_configs_are_user_errors(bad):
    with pytest.raises(PcasError, match="build-avdigits config"):
        av.check_config(av.AVDigitsConfig(**bad))


def test_missing_inputs_name_the_path_and_what_to_pass(tmp_path):
    fsdd = tmp_path / "rec"
    fsdd.mkdir()
    with pytest.raises(PcasError, match=r"nope\.npz: MNIST not found.*x_train.*--mnist PATH"):
        av.input_paths(av.AVDigitsConfig(mnist=tmp_path / "nope.npz", fsdd=fsdd))
    np.savez(tmp_path / "m.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(PcasError, match=r"no-fsdd: FSDD recordings folder not found.*--fsdd PATH"):
        av.input_paths(av.AVDigitsConfig(mnist=tmp_path / "m.npz", fsdd=tmp_path / "no-fsdd"))
    with pytest.raises(PcasError, match=r"m\.npz: MNIST npz lacks array\(s\) \['y_train', 'x_test', 'y_test'\]"):
        av.load_sources(av.AVDigitsConfig(mnist=tmp_path / "m.npz", fsdd=fsdd))


def test_download_offline_says_what_to_pass_instead(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(av.urllib.request, "urlopen", offline)
    cfg = av.AVDigitsConfig(download=True, cache=tmp_path / "cache", root=tmp_path / "out")
    with pytest.raises(PcasError, match=r"cannot download MNIST .*unreachable.*--mnist PATH .*--fsdd PATH"):
        av.run(cfg)
    assert calls[0].startswith("https://raw.githubusercontent.com/kelas/mnist/")
    assert len(calls) == len(av.MNIST_MIRRORS)  # every mirror tried once, then a clear error
    with pytest.raises(PcasError, match=r"cannot download FSDD .*free-spoken-digit-dataset.*--fsdd PATH"):
        av.download_fsdd(tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").rglob("*.npz"))


@needs_data
def test_unknown_or_all_held_out_speakers_are_user_errors(inputs, tmp_path):
    mnist, fsdd = inputs
    with pytest.raises(PcasError, match=r"test speaker\(s\) \['nobody'\].*speakers found: \['george'"):
        av.load_sources(av.AVDigitsConfig(mnist=mnist, fsdd=fsdd, test_speakers=("nobody",)))
    everyone = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
    with pytest.raises(PcasError, match="none is left for train"):
        av.load_sources(av.AVDigitsConfig(mnist=mnist, fsdd=fsdd, test_speakers=everyone))
    # the command line's --test-speakers (repeatable) reaches the same check
    from typer.testing import CliRunner

    from pcas_cli.cli import app

    result = CliRunner().invoke(app, ["build-avdigits", "--mnist", str(mnist), "--fsdd", str(fsdd), "--root",
                                      str(tmp_path / "out"), "--test-speakers", "theo",
                                      "--test-speakers", "nobody"])
    assert isinstance(result.exception, PcasError) and "['nobody']" in str(result.exception)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ determinism


@needs_data
def test_same_seed_gives_identical_clips_and_another_seed_does_not(tiny):
    a = av.generate_clip(tiny, "train", 1, "v2")
    b = av.generate_clip(tiny, "train", 1, "v2")
    for f in ("frames", "waveform", "masks", "visible", "labels"):
        assert np.array_equal(getattr(a.sample, f), getattr(b.sample, f)), f
    assert a.events == b.events and a.mnist == b.mnist
    c = av.generate_clip(dataclasses.replace(tiny, seed=4), "train", 1, "v2")
    assert not np.array_equal(a.sample.frames, c.sample.frames)
    assert not np.array_equal(a.sample.waveform, c.sample.waveform)


@needs_data
def test_same_seed_gives_byte_identical_files(tmp_path, monkeypatch, tiny):
    cfg = dataclasses.replace(tiny, videos=3, val_videos=1, test_videos=1)
    trees = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # same relative default root: avdigits.json/README are identical too
        root = av.run(cfg)
        assert root == Path("data/raw/avdigits-avss")
        trees.append({p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    assert trees[0].keys() == trees[1].keys() and {"sources.csv", "avdigits.json", "README.md"} <= trees[0].keys()
    assert all(trees[0][k] == trees[1][k] for k in trees[0])


@needs_data
def test_worker_processes_do_not_change_the_data(tiny):
    cfg = dataclasses.replace(tiny, videos=3, val_videos=1, test_videos=0)
    serial = list(av.generate(cfg))
    parallel = list(av.generate(dataclasses.replace(cfg, workers=2)))
    assert [c.sample.clip_id for c in serial] == [c.sample.clip_id for c in parallel]
    for a, b in zip(serial, parallel):
        assert np.array_equal(a.sample.frames, b.sample.frames) and np.array_equal(a.sample.waveform, b.sample.waveform)


# ---------------------------------------------------------------------------------------------- ground truth


@needs_data
def test_masks_mark_exactly_the_sounding_digits_strokes(tiny_clips):
    for clip in tiny_clips:
        s, sched, ids = clip.sample, clip.schedule, clip.class_ids
        assert len(set(ids.tolist())) == len(ids), "two digits of one class in a clip"
        for t in range(s.num_frames):
            mask, vis = s.masks[t], s.visible[t]
            assert set(np.unique(vis[vis > 0]).tolist()) == set(ids.tolist())  # every digit stays visible
            assert set(np.unique(mask[mask > 0]).tolist()) == set(ids[sched[t]].tolist())
            for c in ids:  # a sounding digit's mask is all of its strokes; a silent one has none
                assert np.array_equal(mask == c, (vis == c) if c in ids[sched[t]] else np.zeros_like(vis, bool))
            # Strokes, not boxes: ink is a small part of the frame and stands out from the background.
            assert (vis > 0).mean() < 0.2
            lum = s.frames[t].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            for c in ids:
                assert abs(lum[vis == c].mean() - np.median(lum[vis == 0])) > 40
        assert np.array_equal(np.flatnonzero(s.labels) + 1, np.sort(ids[sched.any(axis=0)]))


def test_warp_at_scale_one_and_no_rotation_is_the_tile_itself():
    img = np.zeros((28, 28), np.uint8)
    img[5:20, 10:13] = 255  # a "1"
    img[19, 8:16] = 128
    patch = av._warp(img, 1.0, 0.0)
    assert patch.shape == (42, 42)  # ceil(28 * sqrt 2) + 2: room for any rotation
    assert np.array_equal(patch[7:35, 7:35], img)
    assert patch.sum() == img.sum()
    bar = np.zeros((28, 28), np.uint8)
    bar[5:20, 10:13] = 255  # 15 x 3 pixels
    turned = av._warp(bar, 2.0, 90.0)  # twice as large, lying on its side: about 30 wide and 6 high
    ys, xs = np.nonzero(turned > 127)
    assert 28 <= xs.max() - xs.min() + 1 <= 32 and 5 <= ys.max() - ys.min() + 1 <= 8


@needs_data
def test_digits_move_a_little_between_seconds(tiny_clips):
    moved = [not np.array_equal(c.sample.visible[0], c.sample.visible[-1]) for c in tiny_clips]
    assert np.mean(moved) > 0.8


@needs_data
def test_silent_distractors_and_multi_source_seconds_occur(tiny_clips):
    stats = av.compute_stats([c.sample for c in tiny_clips])
    assert stats["silent_distractor_share"] > 0.3
    assert stats["multi_source_frame_share"] > 0
    assert stats["silent_frame_share"] > 0
    assert list(stats["per_class"]) == list(av.DIGIT_NAMES)
    overlapping = 0
    for c in tiny_clips:
        by_second: dict[int, list[av.SpeechEvent]] = {}
        for e in c.events:
            by_second.setdefault(e.second, []).append(e)
        for es in by_second.values():
            if len(es) == 2:  # spoken over each other: the two words overlap in time
                a, b = es
                overlapping += min(a.start_s + a.duration_s, b.start_s + b.duration_s) > max(a.start_s, b.start_s)
    assert overlapping >= 1


@needs_data
def test_s4_clips_have_exactly_one_spoken_class(tiny):
    cfg = dataclasses.replace(tiny, layout="s4", p_silent_frame=0.0)
    for clip in av.generate(dataclasses.replace(cfg, val_videos=0, test_videos=0)):
        assert clip.sample.labels.sum() == 1 and clip.sample.subset == "s4"
        assert (clip.schedule.sum(axis=1) == 1).all() and clip.schedule.any(axis=0).sum() == 1
        assert len(clip.class_ids) >= 2  # ... among silent distractors


# -------------------------------------------------------------------------------------------------------- audio


@needs_data
def test_speech_lies_inside_its_second_and_silent_seconds_hold_the_noise_floor(tiny):
    cfg = dataclasses.replace(tiny, snr_db=(20.0, 20.0))
    checked = 0
    for i in range(4):
        clip = av.generate_clip(cfg, "train", i, "v2")
        w = clip.sample.waveform
        assert w.shape == (10 * SR,) and w.dtype == np.float32 and np.abs(w).max() <= 1
        assert {(e.second, e.obj) for e in clip.events} == set(zip(*np.nonzero(clip.schedule)))
        for e in clip.events:
            assert e.second <= e.start_s and e.start_s + e.duration_s <= e.second + 1 + 1e-9
        rms = np.sqrt(np.mean(w.reshape(10, SR).astype(np.float64) ** 2, axis=1))
        sounding = clip.schedule.any(axis=1)
        assert np.all(rms[sounding] > 1.5 * clip.noise_rms)
        if (~sounding).any():
            assert np.all((rms[~sounding] > 0.4 * clip.noise_rms) & (rms[~sounding] < 2.0 * clip.noise_rms))
            checked += 1
    assert checked >= 1


def test_normalise_hand_values():
    x = np.array([3.0, -3.0, 3.0, -3.0], np.float32)  # RMS 3, peak 3
    np.testing.assert_allclose(av.normalise(x, "rms"), [0.1, -0.1, 0.1, -0.1], rtol=1e-6)
    y = np.array([0.5, -1.0, 0.25], np.float32)  # peak 1 -> PEAK_TO_RMS * REF_RMS = 0.56
    np.testing.assert_allclose(av.normalise(y, "peak"), [0.28, -0.56, 0.14], rtol=1e-6)
    assert not av.normalise(np.zeros(4, np.float32), "rms").any()  # silence stays silence


@needs_data
def test_quiet_and_loud_speakers_end_at_the_same_level(inputs):
    _, fsdd = inputs
    rec = {r.file: r for r in av._scan_fsdd(fsdd, "skip")[0]}
    levels = []
    for name in ("0_theo_0.wav", "0_jackson_0.wav"):  # theo records about 20 dB quieter
        raw = av._read_recording(fsdd, rec[name], "skip")
        levels.append((np.sqrt(np.mean(raw.astype(np.float64) ** 2)),
                       np.sqrt(np.mean(av.normalise(raw, "rms").astype(np.float64) ** 2))))
    assert levels[1][0] > 3 * levels[0][0]
    assert levels[0][1] == pytest.approx(av.REF_RMS, rel=1e-4) and levels[1][1] == pytest.approx(av.REF_RMS, rel=1e-4)


@needs_data
def test_long_recordings_are_skipped_or_cropped(inputs):
    _, fsdd = inputs
    recs, skipped = av._scan_fsdd(fsdd, "skip")
    assert set(skipped) == {LONG_FILE, "5_lucas_1.wav", "8_lucas_0.wav"}  # the long ones among takes 0-3 too
    assert LONG_FILE not in {r.file for r in recs}
    recs, skipped = av._scan_fsdd(fsdd, "crop")
    long = next(r for r in recs if r.file == LONG_FILE)
    assert skipped == () and long.frames > av.SOURCE_RATE
    assert len(av._read_recording(fsdd, long, "crop")) == av.SOURCE_RATE


# ------------------------------------------------------------------------------------------- splits, disk


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / av.MANIFEST_FILE, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@needs_data
def test_splits_do_not_leak_speakers_recordings_or_images(tmp_path, tiny):
    root = av.run(dataclasses.replace(tiny, root=tmp_path / "avss"))
    rows = _manifest(root)
    spoken = [r for r in rows if r["sounding"] == "1"]
    assert {r["split"] for r in spoken} == {"train", "val", "test"}
    for r in spoken:
        take = int(r["fsdd_file"][:-4].split("_")[2])
        assert r["fsdd_file"].split("_")[1] == r["speaker"] and r["fsdd_file"][0] == r["digit"]
        if r["split"] == "train":
            assert r["speaker"] != "theo"
        else:  # the held-out speaker only: val his even takes, test his odd ones
            assert r["speaker"] == "theo" and take % 2 == (0 if r["split"] == "val" else 1)
    for r in rows:
        idx = int(r["mnist_index"])
        if r["split"] == "train":
            assert r["mnist_split"] == "train"
        else:  # MNIST test images only: val the even indices, test the odd ones
            assert r["mnist_split"] == "test" and idx % 2 == (0 if r["split"] == "val" else 1)
    files = {sp: {r["fsdd_file"] for r in spoken if r["split"] == sp} for sp in ("train", "val", "test")}
    assert not files["train"] & (files["val"] | files["test"]) and not files["val"] & files["test"]
    # One row per clip, second and visible digit; the sounding rows agree with the masks on disk.
    ds = open_dataset("avss", root)
    for split in ("val", "test"):
        for s in ds.iter_split(split):
            for t in range(s.num_frames):
                here = [r for r in rows if r["clip_id"] == s.clip_id and r["second"] == str(t)]
                assert {int(r["digit"]) + 1 for r in here} == set(np.unique(s.visible[t][s.visible[t] > 0]).tolist())
                assert {int(r["digit"]) + 1 for r in here if r["sounding"] == "1"} == \
                       set(np.unique(s.masks[t][s.masks[t] > 0]).tolist())
    readme = (root / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "CC BY-SA 3.0" in readme and "LeCun" in readme and "Jakobovski" in readme


@needs_data
def test_avss_round_trip_through_the_writer_and_reader(tmp_path, tiny, tiny_clips):
    root = av.run(dataclasses.replace(tiny, root=tmp_path / "avss"))
    ds = open_dataset("avss", root)
    assert ds.info.classes == av.DIGIT_NAMES
    expected = {c.sample.clip_id: av.synth.to_layout_sample(c.sample) for c in tiny_clips}
    read = []
    for split in ("train", "val", "test"):
        for s in ds.iter_split(split):
            e = expected[s.clip_id]
            assert (s.split, s.subset) == (e.split, e.subset) and np.array_equal(s.labels, e.labels)
            assert np.array_equal(s.mask_valid, e.mask_valid) and np.array_equal(s.masks, e.masks)
            assert np.array_equal(s.visible, e.visible)
            assert np.abs(s.frames.astype(int) - e.frames).mean() < 6  # JPEG
            np.testing.assert_allclose(s.waveform, e.waveform, atol=2 / 32768)  # 16 kHz PCM_16
            read.append(s)
    assert len(read) == 10
    assert av.compute_stats(root) == av.compute_stats(read) == av.compute_stats(list(expected.values()))
    assert av.load_stats(root)["clips"] == 10
    assert {k for k, _ in av.stats_rows(av.load_stats(root))} >= {"multi-source frames", "class zero"}


@needs_data
@pytest.mark.parametrize("layout", ["s4", "ms3"])
def test_binary_layouts_round_trip(tmp_path, tiny, layout):
    cfg = dataclasses.replace(tiny, layout=layout, videos=3, val_videos=1, test_videos=1)
    clips = {c.sample.clip_id: c for c in av.generate(cfg)}
    root = av.run(dataclasses.replace(cfg, root=tmp_path / layout))
    ds = open_dataset(layout, root)
    n = 0
    for split in ("train", "val", "test"):
        for s in ds.iter_split(split):
            e = av.synth.to_layout_sample(clips[s.clip_id].sample)
            names = [ds.info.classes[i] for i in np.flatnonzero(s.labels)]
            assert names == [av.DIGIT_NAMES[i] for i in np.flatnonzero(e.labels)]
            assert np.array_equal(s.masks, (e.masks > 0).astype(np.uint8)) and np.array_equal(s.mask_valid,
                                                                                               e.mask_valid)
            n += 1
    assert n == 5 and len(_manifest(root)) == sum(5 * len(c.class_ids) for c in clips.values())


@pytest.mark.slow
@needs_data
def test_default_data_set_is_fast_and_has_the_documented_statistics(tmp_path):
    start = time.perf_counter()
    root = av.run(av.AVDigitsConfig(root=tmp_path / "avdigits-avss", mnist=MNIST_NPZ, fsdd=FSDD_DIR))
    assert time.perf_counter() - start < 60
    stats = av.load_stats(root)
    assert stats["clips"] == 360 and stats["clips_per_subset"] == {"v1m": 108, "v1s": 144, "v2": 108}
    assert 0.5 < stats["silent_distractor_share"] < 0.75
    assert 0.15 < stats["multi_source_frame_share"] < 0.4
    assert 0.08 < stats["silent_frame_share"] < 0.25
    assert scenes.SPLITS == ("train", "val", "test")
