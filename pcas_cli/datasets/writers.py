"""Writers of the exact AVSBench layouts (AVSS, S4, MS3), so generated data sets read like the real ones.

Input `Sample`s carry SEMANTIC masks (0 = background, k = classes[k-1]) and `mask_valid`; a mask file is written only
for frames with mask_valid (the caller decides, e.g. S4 train: frame 0 only). Frames keep their resolution; audio is
written as 16 kHz PCM_16 mono wav, as AVSBench's preprocessing does. The readers in this package (and the official
AVSBench loaders) read the result back; see the reader modules for each layout.

Class lists survive a round trip exactly for AVSS and MS3 (a label2idx.json is written). S4 has no class file: its
reader reports the 23 official categories when every category is official, else the sorted categories of the CSV,
so compare S4 labels by class name.

Crash safety: everything is written into `<root>.tmp` and that folder is renamed to `<root>` only at the end, so an
interrupted run never leaves a readable-but-incomplete dataset at `<root>`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import soundfile as sf
from PIL import Image

from pcas_cli.datasets._common import SPLITS
from pcas_cli.datasets.avss import AVSS_COLUMNS, NOT_CLASSES, SUBSET_FRAMES
from pcas_cli.datasets.ms3 import MS3_FRAMES
from pcas_cli.datasets.palette import index_to_rgb
from pcas_cli.datasets.s4 import S4_FRAMES
from pcas_cli.datasets.sample import Sample

WAV_RATE = 16000  # AVSBench wavs are 16 kHz (moviepy in preprocess_s4/ms3.py)
JPEG_QUALITY = 95
_V1_OR_V2_UID = re.compile(r"^(?P<vid>.+)_(?P<start>\d+)_(?P<end>\d+)$")  # <ytid>_<startms>_<endms>


def write_dataset(root: Path, layout: str, classes: Sequence[str], samples: Iterable[Sample],
                  readme: str | None = None) -> dict[str, int]:
    """Write `samples` at `root` in the given AVSBench layout, replacing whatever was there.

    Args:
        root: the dataset folder to create (the folder a reader's `root` points at).
        layout: "avss", "s4" or "ms3".
        classes: object class names (background excluded); class id k = classes[k-1].
        samples: clips with semantic masks; streamed, written in order.
        readme: optional text written as README.md at the root.

    Returns:
        Counts: clips, frames, masks and clips per split.

    Raises:
        ValueError: a sample does not fit the layout (frame count, label count for S4, bad ids or class names).
    """
    if layout not in _WRITERS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(_WRITERS)}")
    classes = tuple(classes)
    _check_classes(classes, layout)
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        counts = _WRITERS[layout](tmp, classes, samples)
        if readme is not None:
            (tmp / "README.md").write_text(readme, encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, root)
    return counts


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished `src` to `dst`; an existing `dst` is moved aside first and deleted after."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    if old.exists():
        shutil.rmtree(old)


# ----------------------------------------------------------------------------------------------------------------
# validation


def _check_classes(classes: tuple[str, ...], layout: str) -> None:
    if not classes or len(classes) > 255:
        raise ValueError(f"need 1..255 classes (uint8 masks), got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError("duplicate class names")
    for c in classes:
        if not c or c != c.strip() or any(ch in c for ch in '/\\,"'):
            raise ValueError(f"bad class name {c!r}")
        # a_obj joins names with "_" (AVSS/MS3), so a name must not contain it nor be one of the skipped tokens.
        if layout != "s4" and ("_" in c or " " in c or c in NOT_CLASSES):
            raise ValueError(f"class name {c!r} cannot be stored in an AVSS a_obj cell (no '_' or spaces)")


def _check_sample(s: Sample, n_classes: int, frames_needed: int, seen: set[str]) -> None:
    cid = s.clip_id
    if not cid or cid in (".", "..") or any(ch in cid for ch in '/\\,"') or cid != cid.strip():
        raise ValueError(f"clip id {cid!r} is not a safe file name")
    if cid in seen:
        raise ValueError(f"duplicate clip id {cid!r}")
    seen.add(cid)
    if s.split not in SPLITS:
        raise ValueError(f"{cid}: split {s.split!r} is not one of {', '.join(SPLITS)}")
    t = s.num_frames
    if s.frames.ndim != 4 or s.frames.shape[3] != 3 or s.frames.dtype != np.uint8:
        raise ValueError(f"{cid}: frames must be (T, H, W, 3) uint8, got {s.frames.shape} {s.frames.dtype}")
    if t != frames_needed:
        raise ValueError(f"{cid}: {t} frames, this layout needs {frames_needed}")
    if s.masks.shape != s.frames.shape[:3] or s.mask_valid.shape != (t,):
        raise ValueError(f"{cid}: masks {s.masks.shape} / mask_valid {s.mask_valid.shape} do not match frames "
                         f"{s.frames.shape[:3]}")
    if s.labels.shape != (n_classes,):
        raise ValueError(f"{cid}: labels shape {s.labels.shape}, expected ({n_classes},)")
    if s.masks.max(initial=0) > n_classes:
        raise ValueError(f"{cid}: mask class index {int(s.masks.max())} > {n_classes} classes")
    if s.visible is not None and s.visible.shape != s.masks.shape:
        raise ValueError(f"{cid}: visible {s.visible.shape} does not match masks {s.masks.shape}")


# ----------------------------------------------------------------------------------------------------------------
# file helpers


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _save_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 4:4:4 chroma (no subsampling): small generated objects keep their colour edges; still a baseline JPEG.
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, quality=JPEG_QUALITY, subsampling=0)


def _binary_png(mask: np.ndarray) -> np.ndarray:
    """Semantic mask -> 0/255 uint8 (the official loaders' `convert('1')` dithers anything else)."""
    return ((mask > 0) * 255).astype(np.uint8)


def _save_wav(path: Path, waveform: np.ndarray, rate: int) -> None:
    """Write mono 16 kHz PCM_16, resampling with torchaudio when the source rate differs."""
    w = np.asarray(waveform, np.float32).reshape(-1)
    if rate != WAV_RATE:
        import torch  # only paid when resampling is needed
        from torchaudio.functional import resample

        w = resample(torch.from_numpy(w), rate, WAV_RATE).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(w, -1.0, 1.0), WAV_RATE, subtype="PCM_16")


def _write_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _class_names(s: Sample, classes: tuple[str, ...]) -> list[str]:
    return [classes[i] for i in np.flatnonzero(s.labels)]


def _a_obj(s: Sample, classes: tuple[str, ...]) -> str:
    # An unlabelled clip gets "background", as 5 real v1m rows do; an empty cell would read as NaN in pandas.
    return "_".join(_class_names(s, classes)) or "background"


def _write_label2idx(root: Path, classes: tuple[str, ...]) -> None:
    table = {"background": 0, **{c: k for k, c in enumerate(classes, start=1)}}
    (root / "label2idx.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


def _avss_row(s: Sample, classes: tuple[str, ...], label: str) -> list[str]:
    """metadata.csv row; vid and start (s_min, s_sec) are parsed from a `<ytid>_<startms>_<endms>` uid when it is one
    (v1m uids are the video id itself, as in the real file)."""
    vid, start_s = s.clip_id, 0
    m = _V1_OR_V2_UID.match(s.clip_id)
    if label != "v1m" and m:
        vid, start_s = m["vid"], int(m["start"]) // 1000
    return [vid, s.clip_id, str(start_s // 60), str(start_s % 60), _a_obj(s, classes), s.split, label]


def _counts(split_counts: Counter, frames: int, masks: int) -> dict[str, int]:
    return {"clips": sum(split_counts.values()), "frames": frames, "masks": masks,
            **{sp: split_counts.get(sp, 0) for sp in SPLITS}}


# ----------------------------------------------------------------------------------------------------------------
# layouts


def _write_avss(root: Path, classes: tuple[str, ...], samples: Iterable[Sample]) -> dict[str, int]:
    rows: list[list[str]] = []
    seen: set[str] = set()
    splits: Counter = Counter()
    n_frames = n_masks = 0
    for s in samples:
        if s.subset not in SUBSET_FRAMES:
            raise ValueError(f"{s.clip_id}: AVSS subset {s.subset!r} is not one of v1s, v1m, v2")
        _check_sample(s, len(classes), SUBSET_FRAMES[s.subset], seen)
        d = root / s.subset / s.clip_id
        for i, frame in enumerate(s.frames):
            _save_jpg(d / "frames" / f"{i}.jpg", frame)
            if s.mask_valid[i]:
                _save_png(d / "labels_semantic" / f"{i}.png", s.masks[i].astype(np.uint8))  # mode L
                _save_png(d / "labels_rgb" / f"{i}.png", index_to_rgb(s.masks[i]))  # mode RGB
                n_masks += 1
            if s.visible is not None:
                _save_png(d / "visible_semantic" / f"{i}.png", s.visible[i].astype(np.uint8))
        _save_wav(d / "audio.wav", s.waveform, s.sample_rate)
        rows.append(_avss_row(s, classes, s.subset))
        splits[s.split] += 1
        n_frames += s.num_frames
    _write_csv(root / "metadata.csv", AVSS_COLUMNS, rows)
    _write_label2idx(root, classes)
    return _counts(splits, n_frames, n_masks)


def _write_s4(root: Path, classes: tuple[str, ...], samples: Iterable[Sample]) -> dict[str, int]:
    rows: list[list[str]] = []
    seen: set[str] = set()
    splits: Counter = Counter()
    n_frames = n_masks = 0
    data = root / "s4_data"
    for s in samples:
        _check_sample(s, len(classes), S4_FRAMES, seen)
        names = _class_names(s, classes)
        if len(names) != 1:
            raise ValueError(f"{s.clip_id}: S4 clips have exactly one category, this one has {len(names)}")
        rel = Path(s.split) / names[0]
        name = s.clip_id
        for k, frame in enumerate(s.frames, start=1):
            _save_png(data / "visual_frames" / rel / name / f"{name}_{k}.png", frame)
            if s.mask_valid[k - 1]:
                _save_png(data / "gt_masks" / rel / name / f"{name}_{k}.png", _binary_png(s.masks[k - 1]))
                n_masks += 1
        _save_wav(data / "audio_wav" / rel / f"{name}.wav", s.waveform, s.sample_rate)
        rows.append([name, "0", names[0], s.split])
        splits[s.split] += 1
        n_frames += s.num_frames
    _write_csv(root / "s4_meta_data.csv", ("name", "start", "category", "split"), rows)
    return _counts(splits, n_frames, n_masks)


def _write_ms3(root: Path, classes: tuple[str, ...], samples: Iterable[Sample]) -> dict[str, int]:
    rows: list[list[str]] = []
    label_rows: list[list[str]] = []
    seen: set[str] = set()
    splits: Counter = Counter()
    n_frames = n_masks = 0
    data = root / "ms3_data"
    for s in samples:
        _check_sample(s, len(classes), MS3_FRAMES, seen)
        name = s.clip_id
        for k, frame in enumerate(s.frames, start=1):
            # No split folder and the `.mp4_` infix: exactly what preprocess_ms3.py produced.
            _save_png(data / "visual_frames" / name / f"{name}.mp4_{k}.png", frame)
            if s.mask_valid[k - 1]:
                _save_png(data / "gt_masks" / s.split / name / f"{name}_{k}.png", _binary_png(s.masks[k - 1]))
                n_masks += 1
        _save_wav(data / "audio_wav" / s.split / f"{name}.wav", s.waveform, s.sample_rate)
        rows.append([name, s.split])
        label_rows.append(_avss_row(s, classes, "v1m"))
        splits[s.split] += 1
        n_frames += s.num_frames
    _write_csv(root / "ms3_meta_data.csv", ("video_id", "split"), rows)
    # Video-level labels the way real MS3 users get them: an AVSS-format metadata.csv (v1m rows), plus the class
    # list so that class ids (and unused classes) survive the round trip.
    _write_csv(root / "metadata.csv", AVSS_COLUMNS, label_rows)
    _write_label2idx(root, classes)
    return _counts(splits, n_frames, n_masks)


_WRITERS: dict[str, Callable[[Path, tuple[str, ...], Iterable[Sample]], dict[str, int]]] = {
    "avss": _write_avss, "s4": _write_s4, "ms3": _write_ms3,
}
