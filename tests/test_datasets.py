"""Dataset readers and layout writers.

Reader fixtures are built by hand with PIL/soundfile in the documented AVSBench layouts
(docs/reference/avsbench-facts.md, section 1), independently of `writers.py`; the writers are then checked by round
trips through the readers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pcas_cli.datasets import ADAPTERS, open_dataset
from pcas_cli.datasets.palette import index_to_rgb, rgb_to_index, voc_palette
from pcas_cli.datasets.s4 import S4_CATEGORIES
from pcas_cli.datasets.sample import Sample
from pcas_cli.datasets.writers import write_dataset
from pcas_cli.errors import PcasError

H = W = 16


# ---------------------------------------------------------------------------------------------------------------
# fixture helpers


def _frame(seed: int) -> np.ndarray:
    """A smooth (H, W, 3) uint8 frame (gradients + a flat block) so that JPEG stays close to the original."""
    y, x = np.mgrid[0:H, 0:W]
    f = np.stack([x * 8 + seed, y * 8 + 2 * seed, np.full_like(x, (seed * 40) % 256)], -1)  # no wrap-around edges
    f[4:10, 4:10] = (200, 60 + seed, 30)
    return f.astype(np.uint8)


def _box_mask(value: int, t: int) -> np.ndarray:
    """(H, W) uint8 with `value` in a box that moves with t."""
    m = np.zeros((H, W), np.uint8)
    m[2 + t % 4: 8 + t % 4, 3:11] = value
    return m


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(path)


def _jpg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95, subsampling=0)


def _wav(path: Path, rate: int = 16000, seconds: float = 0.5, stereo: bool = False) -> np.ndarray:
    """Write a 440 Hz tone; returns the mono float signal written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([mono, mono * 0.5], 1) if stereo else mono
    sf.write(str(path), data, rate, subtype="PCM_16")
    return mono * 0.75 if stereo else mono


def _csv(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# palette


def test_voc_palette_hand_values():
    pal = voc_palette(256)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                7: (128, 128, 128), 8: (64, 0, 0), 9: (192, 0, 0), 70: (32, 128, 128)}
    for j, rgb in expected.items():
        assert tuple(pal[j]) == rgb, j
    assert len({tuple(c) for c in pal}) == 256  # all colours distinct, so decoding is unambiguous


def test_rgb_to_index_exact_equality():
    idx = np.array([[0, 1, 2], [3, 70, 5]], np.uint8)
    rgb = index_to_rgb(idx)
    assert np.array_equal(rgb_to_index(rgb, 71), idx)
    rgb[0, 1] = (127, 0, 0)  # one step off class 1's colour: not a palette colour -> background
    out = rgb_to_index(rgb, 71)
    assert out[0, 1] == 0 and out[0, 2] == 2
    assert rgb_to_index(index_to_rgb(idx), 6)[1, 1] == 0  # class 70 is outside a 6-class palette -> background


# ---------------------------------------------------------------------------------------------------------------
# AVSS reader

V1S, V2, V1M = "abcdefghijk_4000_9000", "lmnopqrstuv_68000_78000", "wxyzwxyzwxy_1"
# DDESeg-style 1-based values: ids must come from key positions (dog = 1), not values (dog = 2).
LABEL2IDX = {"background": 1, "dog": 2, "horse": 3, "cat": 4}


def _avss_tree(root: Path) -> Path:
    _csv(root / "metadata.csv", [
        "vid,uid,s_min,s_sec,a_obj,split,label",
        f"abcdefghijk,{V1S},0,4,h orse,train,v1s",
        f"lmnopqrstuv,{V2},1,8,dog_off-the-screen_horse,val,v2",
        f"{V1M},{V1M},0,0,background,test,v1m",
    ])
    (root / "label2idx.json").write_text(json.dumps(LABEL2IDX))
    # v1s in the doubled {label}/{label}/{uid} folder, only labels_rgb/0.png (train), 8 kHz audio.
    d = root / "v1s" / "v1s" / V1S
    for i in range(5):
        _jpg(d / "frames" / f"{i}.jpg", _frame(i))
    _png(d / "labels_rgb" / "0.png", index_to_rgb(_box_mask(2, 0)))
    _wav(d / "audio.wav", rate=8000)
    # v2: 10 frames, semantic + rgb masks; frame 3's semantic mask is stored at half resolution.
    d = root / "v2" / V2
    for i in range(10):
        _jpg(d / "frames" / f"{i}.jpg", _frame(10 + i))
        sem = _box_mask(1, i) + (np.arange(W)[None, :] >= 12) * np.uint8(2)  # dog box + horse stripe
        sem = sem.astype(np.uint8)
        _png(d / "labels_rgb" / f"{i}.png", index_to_rgb(sem))
        _png(d / "labels_semantic" / f"{i}.png", sem[::2, ::2] if i == 3 else sem)
    _wav(d / "audio.wav", stereo=True)
    # v1m: 5 frames, 5 rgb masks (one with an off-palette colour), visible_semantic.
    d = root / "v1m" / V1M
    for i in range(5):
        _jpg(d / "frames" / f"{i}.jpg", _frame(30 + i))
        rgb = index_to_rgb(_box_mask(3, i))
        rgb[0, 0] = (1, 2, 3)
        _png(d / "labels_rgb" / f"{i}.png", rgb)
        _png(d / "visible_semantic" / f"{i}.png", _box_mask(1, i))
    _wav(d / "audio.wav")
    return root


def test_avss_classes_from_key_positions_and_splits(tmp_path):
    ad = open_dataset("avss", _avss_tree(tmp_path / "avss"))
    assert ad.info.classes == ("dog", "horse", "cat")
    assert ad.info.task == "semantic" and ad.info.max_frames == 10
    assert ad.clip_ids("train") == [V1S] and ad.clip_ids("val") == [V2] and ad.clip_ids("test") == [V1M]


def test_avss_v1s_doubled_folder_rgb_mask_quirk_and_8khz(tmp_path):
    s = open_dataset("avss", _avss_tree(tmp_path / "avss")).load(V1S)
    assert s.subset == "v1s" and s.split == "train"
    assert s.frames.shape == (5, H, W, 3) and s.frames.dtype == np.uint8
    assert s.mask_valid.tolist() == [True, False, False, False, False]
    assert np.array_equal(s.masks[0], _box_mask(2, 0)) and not s.masks[1:].any()
    assert s.labels.tolist() == [0, 1, 0]  # "h orse" -> horse
    assert s.sample_rate == 8000 and s.waveform.shape == (4000,) and s.waveform.dtype == np.float32
    assert s.visible is None


def test_avss_v2_semantic_preferred_resized_and_off_screen(tmp_path):
    root = _avss_tree(tmp_path / "avss")
    s = open_dataset("avss", root).load(V2)
    assert s.frames.shape == (10, H, W, 3) and s.mask_valid.all()
    assert s.labels.tolist() == [1, 1, 0]  # dog_off-the-screen_horse
    jpeg_err = float(np.abs(s.frames.astype(int) - np.stack([_frame(10 + i) for i in range(10)])).mean())
    assert jpeg_err < 3  # JPEG at quality 95
    sem3 = (_box_mask(1, 3) + (np.arange(W)[None, :] >= 12) * 2).astype(np.uint8)
    assert s.masks[3].shape == (H, W)
    # Nearest upsampling of the half-size map: pixel (y, x) takes the value of (y - y % 2, x - x % 2).
    assert np.array_equal(s.masks[3], sem3[::2, ::2].repeat(2, 0).repeat(2, 1))
    # Stereo is mixed to mono: (1 + 0.5) / 2 of the tone.
    assert s.sample_rate == 16000 and abs(float(np.abs(s.waveform).max()) - 0.375) < 1e-3
    # labels_rgb decodes to exactly the labels_semantic maps.
    for p in (root / "v2" / V2 / "labels_semantic").iterdir():
        p.unlink()
    rgb = open_dataset("avss", root).load(V2)
    keep = [i for i in range(10) if i != 3]
    assert np.array_equal(rgb.masks[keep], s.masks[keep]) and rgb.mask_valid.all()


def test_avss_v1m_background_row_off_palette_and_visible(tmp_path):
    s = open_dataset("avss", _avss_tree(tmp_path / "avss")).load(V1M)
    assert s.labels.tolist() == [0, 0, 0]  # a_obj "background" names no class
    assert s.mask_valid.all() and s.masks[0, 0, 0] == 0  # off-palette colour -> background
    assert np.array_equal(s.masks[2], _box_mask(3, 2))
    assert s.visible is not None and s.visible.shape == (5, H, W) and np.array_equal(s.visible[1], _box_mask(1, 1))


def test_avss_subsets_option(tmp_path):
    ad = open_dataset("avss", _avss_tree(tmp_path / "avss"), subsets=("v2",))
    assert ad.clip_ids("train") == [] and ad.clip_ids("val") == [V2] and ad.clip_ids("test") == []
    with pytest.raises(PcasError, match="v3"):
        open_dataset("avss", tmp_path / "avss", subsets=("v3",))


def test_avss_errors_name_the_file(tmp_path):
    root = _avss_tree(tmp_path / "avss")
    (root / "v2" / V2 / "frames" / "7.jpg").unlink()
    with pytest.raises(PcasError, match=r"7\.jpg: missing frame"):
        open_dataset("avss", root).load(V2)
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_text(text.replace("h orse", "unicorn"))
    with pytest.raises(PcasError, match=rf"metadata\.csv.*{V1S}.*'unicorn'"):
        open_dataset("avss", root)
    (root / "metadata.csv").write_text(text.replace("a_obj", "objects"))
    with pytest.raises(PcasError, match=r"metadata\.csv: missing column 'a_obj'"):
        open_dataset("avss", root)
    (root / "metadata.csv").unlink()
    with pytest.raises(PcasError, match=r"metadata\.csv: missing"):
        open_dataset("avss", root)


def test_missing_val_or_test_masks_are_errors_not_unscored_frames(tmp_path):
    """Every val / test frame is scored: a missing mask names its file (a train frame may lack one)."""
    root = _avss_tree(tmp_path / "avss")  # V2 is a val clip with both mask files for each of its 10 frames
    (root / "v2" / V2 / "labels_semantic/1.png").unlink()
    assert open_dataset("avss", root).load(V2).mask_valid.all()  # the colour mask stands in
    (root / "v2" / V2 / "labels_rgb/1.png").unlink()
    with pytest.raises(PcasError, match=r"labels_semantic/1\.png: mask not found .*every val frame"):
        open_dataset("avss", root).load(V2)
    s4 = _s4_tree(tmp_path / "s4")
    (s4 / "s4_data/gt_masks/val/helicopter/vidval00001/vidval00001_3.png").unlink()
    with pytest.raises(PcasError, match=r"vidval00001_3\.png: mask not found; every val frame"):
        open_dataset("s4", s4).load("vidval00001")
    assert open_dataset("s4", s4).load("vidtrain001").mask_valid.tolist() == [True] + [False] * 4


def test_own_videos_test_split_without_masks_is_extracted_unscored(tmp_path):
    """`pcas extract --test-without-masks`: test frames may lack masks (labelled, never scored); val still may not."""
    from pcas_cli.artifacts import read_features, require_masks
    from pcas_cli.stages.extract import ExtractConfig, run as extract

    root = _avss_tree(tmp_path / "avss")  # V1M is the test clip
    shutil.rmtree(root / "v1m" / V1M / "labels_rgb")
    with pytest.raises(PcasError, match=r"labels_semantic/0\.png: mask not found .*every test frame"):
        open_dataset("avss", root).load(V1M)
    assert not open_dataset("avss", root, unscored=("test",)).load(V1M).mask_valid.any()
    s4 = _s4_tree(tmp_path / "s4")
    (s4 / "s4_data/gt_masks/val/helicopter/vidval00001/vidval00001_3.png").unlink()
    assert open_dataset("s4", s4, unscored=("val",)).load("vidval00001").mask_valid.tolist() == [True] * 2 + [
        False] + [True] * 2

    cfg = ExtractConfig(layout="avss", root=root, run=tmp_path / "run", image_size=8, test_without_masks=True)
    test, val = extract(cfg)[2], tmp_path / "run" / "features" / "val.h5"
    assert read_features(test).meta["unscored"] and "unscored" not in read_features(val).meta
    with pytest.raises(PcasError, match=r"test\.h5: extracted with --test-without-masks: .*nothing to score"):
        require_masks(read_features(test), "there is nothing to score")
    require_masks(read_features(val), "there is nothing to score")  # val is scored: no error
    shutil.rmtree(root / "v2" / V2 / "labels_rgb")
    shutil.rmtree(root / "v2" / V2 / "labels_semantic")
    with pytest.raises(PcasError, match=r"labels_semantic/0\.png: mask not found .*every val frame"):
        extract(cfg)  # val chooses the thresholds: its masks stay required


def test_a_csv_that_is_not_utf8_is_one_clear_error(tmp_path):
    root = _s4_tree(tmp_path / "s4")
    (root / "s4_meta_data.csv").write_bytes(b"name,start,category,split\nvid\xff,0,dog_barking,train\n")
    with pytest.raises(PcasError, match=r"s4_meta_data\.csv: not UTF-8 text \(byte 0xff"):
        open_dataset("s4", root)


def test_open_dataset_errors(tmp_path):
    with pytest.raises(PcasError, match="unknown dataset layout 'vggsound'"):
        open_dataset("vggsound", tmp_path)
    with pytest.raises(PcasError, match="nowhere: dataset root does not exist"):
        open_dataset("s4", tmp_path / "nowhere")
    with pytest.raises(PcasError, match="subsets"):
        open_dataset("s4", tmp_path, subsets=("v2",))
    assert set(ADAPTERS) == {"avss", "s4", "ms3"}


# ---------------------------------------------------------------------------------------------------------------
# S4 reader

def _s4_tree(root: Path, category_val: str = "helicopter") -> Path:
    _csv(root / "s4_meta_data.csv", ["name,start,category,split", "vidtrain001,0,dog_barking,train",
                                     f"vidval00001,3,{category_val},val"])
    data = root / "s4_data"
    for name, split, cat, ks in (("vidtrain001", "train", "dog_barking", [1]),
                                 ("vidval00001", "val", category_val, [1, 2, 3, 4, 5])):
        for k in range(1, 6):
            _png(data / "visual_frames" / split / cat / name / f"{name}_{k}.png", _frame(k))
        for k in ks:
            _png(data / "gt_masks" / split / cat / name / f"{name}_{k}.png", _box_mask(255, k))
        _wav(data / "audio_wav" / split / cat / f"{name}.wav")
    return root


def test_s4_masks_and_labels(tmp_path):
    ad = open_dataset("s4", _s4_tree(tmp_path / "s4"))
    assert ad.info.classes == S4_CATEGORIES and ad.info.task == "binary" and ad.info.max_frames == 5
    tr = ad.load("vidtrain001")
    assert tr.mask_valid.tolist() == [True, False, False, False, False]
    assert np.array_equal(tr.masks[0], _box_mask(1, 1)) and not tr.masks[1:].any()  # 0/255 -> {0, 1}
    assert np.array_equal(tr.frames, np.stack([_frame(k) for k in range(1, 6)]))  # PNG frames are exact
    assert tr.labels.sum() == 1 and tr.labels[S4_CATEGORIES.index("dog_barking")] == 1
    va = ad.load("vidval00001")
    assert va.mask_valid.all() and np.array_equal(va.masks[4], _box_mask(1, 5)) and va.subset == "s4"
    assert va.labels[S4_CATEGORIES.index("helicopter")] == 1


def test_s4_threshold_and_custom_categories(tmp_path):
    root = _s4_tree(tmp_path / "s4", category_val="zebra_neighing")
    grey = np.zeros((H, W), np.uint8)
    grey[0, :4] = (127, 128, 200, 255)
    _png(root / "s4_data/gt_masks/train/dog_barking/vidtrain001/vidtrain001_1.png", grey)
    ad = open_dataset("s4", root)
    assert ad.info.classes == ("dog_barking", "zebra_neighing")  # sorted CSV categories, not the official 23
    assert ad.load("vidtrain001").masks[0, 0, :4].tolist() == [0, 1, 1, 1]
    assert ad.load("vidval00001").labels.tolist() == [0, 1]


def test_s4_errors(tmp_path):
    root = _s4_tree(tmp_path / "s4")
    (root / "s4_data/visual_frames/val/helicopter/vidval00001/vidval00001_4.png").unlink()
    with pytest.raises(PcasError, match=r"vidval00001_4\.png: missing frame"):
        open_dataset("s4", root).load("vidval00001")
    _csv(root / "s4_meta_data.csv", ["name,category", "a,b"])
    with pytest.raises(PcasError, match=r"s4_meta_data\.csv: missing column"):
        open_dataset("s4", root)
    (root / "s4_meta_data.csv").unlink()
    with pytest.raises(PcasError, match=r"s4_meta_data\.csv: missing"):
        open_dataset("s4", root)


def test_s4_fingerprint_tracks_files(tmp_path):
    root = _s4_tree(tmp_path / "s4")
    ad = open_dataset("s4", root)
    fp = ad.fingerprint("val")
    assert fp == open_dataset("s4", root).fingerprint("val") and fp != ad.fingerprint("train")
    p = root / "s4_data/gt_masks/val/helicopter/vidval00001/vidval00001_2.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ad.fingerprint("val") != fp


# ---------------------------------------------------------------------------------------------------------------
# MS3 reader

MS3_IDS = ("_19NVGk6Zt8_0", "_fvpYLXtQHQ_1")


def _ms3_tree(root: Path, with_labels: bool = True) -> Path:
    _csv(root / "ms3_meta_data.csv", ["video_id,split", f"{MS3_IDS[0]},train", f"{MS3_IDS[1]},test"])
    data = root / "ms3_data"
    for name, split in ((MS3_IDS[0], "train"), (MS3_IDS[1], "test")):
        for k in range(1, 6):
            _png(data / "visual_frames" / name / f"{name}.mp4_{k}.png", _frame(k + 5))  # no split folder
            _png(data / "gt_masks" / split / name / f"{name}_{k}.png", _box_mask(255, k), mode="P")
        _wav(data / "audio_wav" / split / f"{name}.wav")
    if with_labels:
        _csv(root / "metadata.csv", [
            "vid,uid,s_min,s_sec,a_obj,split,label",
            f"{MS3_IDS[0]},{MS3_IDS[0]},0,0,guitar,train,v1m",
            f"{MS3_IDS[1]},{MS3_IDS[1]},0,0,guitar_violin,test,v1m",
            "zzzzzzzzzzz,zzzzzzzzzzz_0_5000,0,0,tabla,train,v1s",  # not v1m: not an MS3 label source
        ])
    return root


def test_ms3_layout_and_labels_from_metadata(tmp_path):
    ad = open_dataset("ms3", _ms3_tree(tmp_path / "ms3"))
    assert ad.info.classes == ("guitar", "violin") and ad.info.task == "binary"
    assert ad.clip_ids("train") == [MS3_IDS[0]] and ad.clip_ids("test") == [MS3_IDS[1]]
    s = ad.load(MS3_IDS[1])
    assert s.labels.tolist() == [1, 1] and s.subset == "ms3" and s.split == "test"
    assert s.mask_valid.all() and np.array_equal(s.masks[2], _box_mask(1, 3))
    assert np.array_equal(s.frames[0], _frame(6))


def test_ms3_label2idx_beside_labels_csv_and_option(tmp_path):
    root = _ms3_tree(tmp_path / "ms3", with_labels=False)
    labels = _ms3_tree(tmp_path / "avss_meta")  # any folder holding an AVSS metadata.csv
    (labels / "label2idx.json").write_text(json.dumps({"background": 0, "violin": 1, "tabla": 2, "guitar": 3}))
    ad = open_dataset("ms3", root, labels_csv=labels / "metadata.csv")
    assert ad.info.classes == ("violin", "tabla", "guitar")
    assert ad.load(MS3_IDS[0]).labels.tolist() == [0, 0, 1]


def test_ms3_errors(tmp_path):
    root = _ms3_tree(tmp_path / "ms3", with_labels=False)
    with pytest.raises(PcasError, match="labels_csv"):
        open_dataset("ms3", root)
    _csv(root / "metadata.csv", ["vid,uid,s_min,s_sec,a_obj,split,label", f"x,{MS3_IDS[0]},0,0,guitar,train,v1m"])
    with pytest.raises(PcasError, match=rf"metadata\.csv: no v1m row .*{MS3_IDS[1]}"):
        open_dataset("ms3", root)


# ---------------------------------------------------------------------------------------------------------------
# writers: round trips


def _sample(cid: str, split: str, subset: str, t: int, labels: list[int], valid: list[bool], seed: int,
            rate: int = 16000, visible: bool = False) -> Sample:
    classes_on = [k + 1 for k, v in enumerate(labels) if v]
    masks = np.stack([_box_mask(classes_on[i % len(classes_on)] if classes_on else 0, i) for i in range(t)])
    masks = masks * np.array(valid, np.uint8)[:, None, None]
    wave = (0.3 * np.sin(np.arange(rate // 2) * 0.05 * (seed + 1))).astype(np.float32)
    return Sample(clip_id=cid, split=split, subset=subset, frames=np.stack([_frame(seed + i) for i in range(t)]),
                  waveform=wave, sample_rate=rate, labels=np.array(labels, np.uint8), masks=masks,
                  mask_valid=np.array(valid), visible=masks.copy() if visible else None)


def _check_same(a: Sample, b: Sample, exact_frames: bool, binary: bool = False) -> None:
    assert (b.clip_id, b.split) == (a.clip_id, a.split)
    assert b.mask_valid.tolist() == a.mask_valid.tolist()
    assert np.array_equal(b.masks, (a.masks > 0).astype(np.uint8) if binary else a.masks)
    diff = np.abs(b.frames.astype(int) - a.frames.astype(int))
    assert int(diff.max()) == 0 if exact_frames else float(diff.mean()) < 3
    assert b.sample_rate == 16000
    if a.sample_rate == 16000:
        assert np.allclose(b.waveform, a.waveform, atol=1 / 32768 + 1e-6)


def test_write_avss_round_trip(tmp_path):
    classes = ("dog", "horse", "emergency-car")
    samples = [
        _sample("abcdefghijk_4000_9000", "train", "v1s", 5, [0, 1, 0], [True] + [False] * 4, 0, rate=8000),
        _sample("lmnopqrstuv_68000_78000", "val", "v2", 10, [1, 0, 1], [True] * 10, 3, visible=True),
        _sample("wxyzwxyzwxy_1", "test", "v1m", 5, [0, 0, 0], [True] * 5, 6),
    ]
    root = tmp_path / "avss"
    counts = write_dataset(root, "avss", classes, samples, readme="synthetic")
    assert counts == {"clips": 3, "frames": 20, "masks": 16, "train": 1, "val": 1, "test": 1}
    assert (root / "README.md").read_text() == "synthetic" and not (tmp_path / "avss.tmp").exists()
    lines = (root / "metadata.csv").read_text().splitlines()
    assert lines[0] == "vid,uid,s_min,s_sec,a_obj,split,label"
    assert lines[2] == "lmnopqrstuv,lmnopqrstuv_68000_78000,1,8,dog_emergency-car,val,v2"
    assert lines[3] == "wxyzwxyzwxy_1,wxyzwxyzwxy_1,0,0,background,test,v1m"
    assert list(json.loads((root / "label2idx.json").read_text())) == ["background", *classes]
    ad = open_dataset("avss", root)
    assert ad.info.classes == classes
    for a in samples:
        b = ad.load(a.clip_id)
        _check_same(a, b, exact_frames=False)
        assert b.labels.tolist() == a.labels.tolist() and b.subset == a.subset
        assert (b.visible is None) == (a.visible is None)
    assert np.array_equal(ad.load(samples[1].clip_id).visible, samples[1].visible)
    assert ad.load(samples[0].clip_id).waveform.shape == (8000,)  # 0.5 s at 8 kHz -> 16 kHz
    # labels_rgb alone decodes to the same maps.
    for p in root.rglob("labels_semantic"):
        for f in p.iterdir():
            f.unlink()
    b = open_dataset("avss", root).load(samples[1].clip_id)
    assert np.array_equal(b.masks, samples[1].masks)


def test_write_s4_round_trip(tmp_path):
    classes = ("dog_barking", "helicopter")  # official names: the reader reports the official 23-class list
    samples = [_sample("vidtrain001", "train", "s4", 5, [1, 0], [True] + [False] * 4, 1),
               _sample("vidval00001", "val", "s4", 5, [0, 1], [True] * 5, 2)]
    root = tmp_path / "s4"
    assert write_dataset(root, "s4", classes, samples)["masks"] == 6
    assert (root / "s4_meta_data.csv").read_text().splitlines()[:2] == ["name,start,category,split",
                                                                        "vidtrain001,0,dog_barking,train"]
    mask = root / "s4_data/gt_masks/val/helicopter/vidval00001/vidval00001_3.png"
    assert set(np.unique(np.asarray(Image.open(mask)))) == {0, 255}
    assert np.array_equal(np.asarray(Image.open(mask).convert("1")), samples[1].masks[2] > 0)  # official loader
    ad = open_dataset("s4", root)
    assert ad.info.classes == S4_CATEGORIES
    for a in samples:
        b = ad.load(a.clip_id)
        _check_same(a, b, exact_frames=True, binary=True)
        assert [ad.info.classes[i] for i in np.flatnonzero(b.labels)] == [classes[i] for i in np.flatnonzero(a.labels)]
    # Custom category names: the reader falls back to the sorted CSV categories.
    write_dataset(root, "s4", ("zz_top", "aa_bottom"), samples)
    assert open_dataset("s4", root).info.classes == ("aa_bottom", "zz_top")


def test_write_ms3_round_trip(tmp_path):
    classes = ("violin", "guitar", "tabla")
    samples = [_sample(MS3_IDS[0], "train", "ms3", 5, [1, 1, 0], [True] * 5, 4),
               _sample(MS3_IDS[1], "test", "ms3", 5, [0, 0, 1], [True] * 5, 5)]
    root = tmp_path / "ms3"
    write_dataset(root, "ms3", classes, samples)
    assert (root / "ms3_data/visual_frames" / MS3_IDS[0] / f"{MS3_IDS[0]}.mp4_5.png").is_file()
    mask = root / "ms3_data/gt_masks/test" / MS3_IDS[1] / f"{MS3_IDS[1]}_2.png"
    assert set(np.unique(np.asarray(Image.open(mask).convert("P")))) == {0, 255}  # official loader: mode P
    ad = open_dataset("ms3", root)
    assert ad.info.classes == classes
    for a in samples:
        b = ad.load(a.clip_id)
        _check_same(a, b, exact_frames=True, binary=True)
        assert b.labels.tolist() == a.labels.tolist()


def test_writer_replaces_root_and_rejects_bad_samples(tmp_path):
    root = tmp_path / "s4"
    good = _sample("vidval00001", "val", "s4", 5, [0, 1], [True] * 5, 2)
    write_dataset(root, "s4", ("a", "b"), [good, _sample("other", "test", "s4", 5, [1, 0], [True] * 5, 3)])
    write_dataset(root, "s4", ("a", "b"), [good])
    assert open_dataset("s4", root).clip_ids("test") == [] and not (root / "s4_data/visual_frames/test").exists()

    def crashing():
        yield good
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_dataset(root, "s4", ("a", "b"), crashing())
    assert open_dataset("s4", root).clip_ids("val") == ["vidval00001"]  # old dataset untouched
    assert not (tmp_path / "s4.tmp").exists()
    with pytest.raises(ValueError, match="exactly one category"):
        write_dataset(root, "s4", ("a", "b"), [_sample("x", "val", "s4", 5, [1, 1], [True] * 5, 0)])
    with pytest.raises(ValueError, match="needs 10"):
        write_dataset(tmp_path / "avss", "avss", ("a", "b"), [_sample("x", "val", "v2", 5, [1, 0], [True] * 5, 0)])
    with pytest.raises(ValueError, match="a_obj"):
        write_dataset(tmp_path / "avss", "avss", ("dog_barking",), [])
