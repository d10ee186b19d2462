"""Shared reading helpers for the dataset adapters: images, masks, wavs, CSVs and the split fingerprint.

Every reader raises `PcasError` naming the offending file on a missing or unreadable input, so that a broken dataset
is reported in one line rather than as a PIL/soundfile traceback.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
from PIL import Image

from pcas_cli.datasets.sample import Sample
from pcas_cli.errors import PcasError, fail

SPLITS = ("train", "val", "test")


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise a PcasError naming it."""
    if not path.is_file():
        raise fail(path, f"missing {what}")
    return path


def _open_image(path: Path, what: str) -> Image.Image:
    require_file(path, what)
    try:
        im = Image.open(path)
        im.load()
    except OSError as e:  # PIL raises OSError/UnidentifiedImageError (a subclass) on corrupt files
        raise fail(path, f"cannot read {what}: {e}") from None
    return im


def read_rgb(path: Path, what: str = "frame") -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (a P-mode file, e.g. a palette-coloured mask, through its palette)."""
    return np.asarray(_open_image(path, what).convert("RGB"), dtype=np.uint8)


def scored(split: str, unscored: frozenset[str]) -> bool:
    """Whether every frame of `split` needs a mask: val / test frames are scored, unless the split was declared
    unscored (your own videos, labelled but not scored)."""
    return split != "train" and split not in unscored


def read_index_png(path: Path, what: str = "class-index mask") -> np.ndarray:
    """Read a class-index PNG (mode L or P: the stored values/indices are the class ids) as (H, W) uint8."""
    im = _open_image(path, what)
    if im.mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I", "I;16"):
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 255:
            raise fail(path, f"{what} has values outside 0..255")
        return a.astype(np.uint8)
    if im.mode in ("RGB", "RGBA"):
        # Some tools save grey maps as RGB; accept it only when the three channels agree.
        a = np.asarray(im.convert("RGB"))
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise fail(path, f"{what} is a colour image; expected a single-channel class-index PNG")
        return np.ascontiguousarray(a[..., 0])
    raise fail(path, f"{what} has unsupported PNG mode {im.mode!r}")


def read_binary_png(path: Path, what: str = "mask") -> np.ndarray:
    """Read a 0/255 binary mask as (H, W) uint8 in {0, 1}; grey values >= 128 count as foreground.

    The image is first converted to grey through its own palette (mode P/1 included), so a P-mode file whose index 1
    is white reads as foreground too.
    """
    grey = np.asarray(_open_image(path, what).convert("L"), dtype=np.uint8)
    return (grey >= 128).astype(np.uint8)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a wav as mono float32 in [-1, 1] at its native rate: returns ((S,), sample_rate)."""
    require_file(path, "audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise fail(path, f"cannot read audio: {e}") from None
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(sr)


def fit_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w) label map to (H, W) with nearest neighbour (keeps class ids exact); no-op when sizes match."""
    if mask.shape == hw:
        return mask
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST), dtype=np.uint8)


def stack_frames(frames: Sequence[np.ndarray], paths: Sequence[Path]) -> np.ndarray:
    """Stack (H, W, 3) frames into (T, H, W, 3); all frames of a clip must share one size."""
    hw = frames[0].shape[:2]
    for f, p in zip(frames, paths):
        if f.shape[:2] != hw:
            raise fail(p, f"frame size {f.shape[1]}x{f.shape[0]} differs from the clip's first frame "
                          f"{hw[1]}x{hw[0]}")
    return np.stack(frames)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read a CSV file: (header, data rows), cells stripped, blank lines skipped, a UTF-8 BOM tolerated."""
    require_file(path, "metadata CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [[c.strip() for c in r] for r in csv.reader(fh) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise fail(path, f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8") \
            from None
    except csv.Error as e:
        raise fail(path, f"malformed CSV: {e}") from None
    if not rows:
        raise fail(path, "empty CSV (no header row)")
    return rows[0], rows[1:]


def column(path: Path, header: list[str], name: str) -> int:
    """Index of the named column, or a PcasError naming the CSV and the missing column."""
    if name not in header:
        raise fail(path, f"missing column {name!r} (header is {','.join(header)})")
    return header.index(name)


def check_split(path: Path, split: str, where: str) -> str:
    """Validate a split value read from a CSV."""
    if split not in SPLITS:
        raise fail(path, f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def check_split_arg(split: str) -> None:
    if split not in SPLITS:
        raise PcasError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def multi_hot(names: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """(C,) uint8 multi-hot over `classes` (names must be members)."""
    out = np.zeros(len(classes), np.uint8)
    index = {c: i for i, c in enumerate(classes)}
    for n in names:
        out[index[n]] = 1
    return out


def list_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Existing files among `paths`, descending into directories."""
    for p in paths:
        if p.is_dir():
            yield from (q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            yield p


def fingerprint(root: Path, files: Iterable[Path], metadata: Iterable[Path], clip_ids: Sequence[str]) -> str:
    """sha256 over the metadata files' bytes, the split's clip ids and the sorted (relative path, size, mtime_ns)
    of its `files`.

    Cheap (one stat per file, no content read) yet changes whenever a file is added, removed, resized or touched,
    or when the selected clips change (e.g. another AVSS `subsets` choice).
    """
    h = hashlib.sha256()
    h.update("\n".join(clip_ids).encode() + b"\0")
    for m in metadata:
        h.update(m.name.encode() + b"\0")
        h.update(m.read_bytes() if m.is_file() else b"<missing>")
    entries = []
    for f in set(files):
        st = f.stat()
        entries.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(entries):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def iter_samples(adapter, split: str) -> Iterator[Sample]:
    """Default `iter_split`: load the split's clips in `clip_ids` order."""
    for clip_id in adapter.clip_ids(split):
        yield adapter.load(clip_id)
