"""Reader for the AVSBench-semantic (AVSS) layout: one folder per clip, classes from `label2idx.json`.

Layout (docs/reference/avsbench-facts.md, section 1):

    root/metadata.csv                 vid,uid,s_min,s_sec,a_obj,split,label   (label = v1s | v1m | v2)
    root/label2idx.json               71 keys, background first; class id = KEY POSITION (values are ignored:
                                      the public DDESeg copy has 1-based values)
    root/{label}/{uid}/               or the doubled root/{label}/{label}/{uid}/ of some extracted copies
        frames/{i}.jpg                i = 0..4 (v1s, v1m) or 0..9 (v2)
        audio.wav
        labels_semantic/{i}.png       class-index mask (preferred when present)
        labels_rgb/{i}.png            VOC-palette mask, decoded by exact colour equality (unknown colour -> 0)
        visible_semantic/{i}.png      pcas extension (generated data only): every visible object, class index

A train frame has a mask when one of its mask files exists (v1s train clips have only `0.png`); a val / test frame
without one is an error (it would be scored), except in the splits named `unscored` (your own videos: labelled,
never scored). Masks whose size differs from their frame are resized to the frame with nearest neighbour. Video-level
labels come from `a_obj`; its known quirks are handled: `off-the-screen` and `background` are not classes and are
skipped, and a name with stray spaces (`h orse`) is accepted when removing the spaces gives a known class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pcas_cli.datasets import _common as io
from pcas_cli.datasets.palette import rgb_to_index
from pcas_cli.datasets.sample import DatasetInfo, Sample
from pcas_cli.errors import PcasError, fail

AVSS_COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}  # frames per clip by the `label` column
NOT_CLASSES = frozenset({"off-the-screen", "background"})  # a_obj tokens that name no object class
BACKGROUND_KEYS = frozenset({"background", "_background_", "bg"})


def parse_a_obj(a_obj: str, known: Sequence[str] | None, csv_path: Path, uid: str) -> list[str]:
    """Split an `a_obj` cell into class names, handling the AVSS metadata quirks.

    Args:
        a_obj: sounding classes joined by "_" (class names themselves use hyphens).
        known: the class vocabulary; None accepts any name (spaces are then always removed).
        csv_path: the metadata file, for error messages.
        uid: the row's uid, for error messages.

    Returns:
        The distinct class names in order of appearance.
    """
    names: list[str] = []
    for raw in a_obj.split("_"):
        tok = raw.strip()
        if not tok or tok in NOT_CLASSES:
            continue
        if known is None:
            tok = tok.replace(" ", "")
        elif tok not in known:
            squeezed = tok.replace(" ", "")  # the one v1s row spelled "h orse"
            if squeezed not in known:
                raise fail(csv_path, f"uid {uid}: unknown class {tok!r} in a_obj")
            tok = squeezed
        if tok not in names:
            names.append(tok)
    return names


def read_label2idx(path: Path) -> tuple[str, ...]:
    """Object classes from a label2idx.json: its keys in file order, background (the first key) dropped."""
    io.require_file(path, "label2idx.json (class list)")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(path, f"not valid JSON: {e}") from None
    if not isinstance(table, dict) or len(table) < 2:
        raise fail(path, "expected a JSON object with background and at least one class")
    keys = list(table)
    if keys[0].lower() not in BACKGROUND_KEYS:
        raise fail(path, f"first key must be the background class, got {keys[0]!r}")
    if len(keys) > 256:
        raise fail(path, f"{len(keys)} classes; at most 256 fit in a uint8 mask")
    return tuple(keys[1:])


@dataclass(frozen=True)
class AVSSRow:
    """One metadata.csv row, with `a_obj` already parsed into class names."""

    uid: str
    split: str
    label: str  # v1s | v1m | v2
    names: tuple[str, ...]  # sounding classes (video-level labels)


def read_metadata(csv_path: Path, known: Sequence[str] | None) -> dict[str, AVSSRow]:
    """Read an AVSS metadata.csv (columns by name), validating label, split and class names; uid -> row."""
    header, rows = io.read_csv(csv_path)
    cols = {name: io.column(csv_path, header, name) for name in AVSS_COLUMNS}
    out: dict[str, AVSSRow] = {}
    for n, r in enumerate(rows, start=2):  # line numbers as an editor shows them (header is line 1)
        if len(r) < len(header):
            raise fail(csv_path, f"line {n}: {len(r)} fields, the header has {len(header)}")
        uid, label, split = r[cols["uid"]], r[cols["label"]], r[cols["split"]]
        if label not in SUBSET_FRAMES:
            raise fail(csv_path, f"uid {uid}: label {label!r} is not one of v1s, v1m, v2")
        io.check_split(csv_path, split, f"uid {uid}")
        if uid in out:
            raise fail(csv_path, f"duplicate uid {uid}")
        names = parse_a_obj(r[cols["a_obj"]], known, csv_path, uid)
        out[uid] = AVSSRow(uid=uid, split=split, label=label, names=tuple(names))
    return out


class AVSSAdapter:
    """AVSBench-semantic reader (task "semantic", up to 10 frames per clip).

    Args:
        root: the folder holding metadata.csv and label2idx.json.
        subsets: which `label` values to include (any of v1s, v1m, v2); default all three.
        unscored: splits whose frames may lack masks (mask_valid False): they can be labelled but not scored.
    """

    def __init__(self, root: Path, subsets: Sequence[str] = tuple(SUBSET_FRAMES), unscored: Sequence[str] = ()
                 ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise fail(self.root, "dataset root does not exist")
        subsets = tuple(subsets) or tuple(SUBSET_FRAMES)
        bad = [s for s in subsets if s not in SUBSET_FRAMES]
        if bad:
            raise PcasError(f"unknown AVSS subset(s) {', '.join(bad)}; expected some of v1s, v1m, v2")
        self.subsets = subsets
        self.unscored = frozenset(unscored)
        self.csv_path = self.root / "metadata.csv"
        self.label2idx_path = self.root / "label2idx.json"
        classes = read_label2idx(self.label2idx_path)
        self.info = DatasetInfo(name="avss", task="semantic", classes=classes, max_frames=max(SUBSET_FRAMES.values()))
        self._rows = read_metadata(self.csv_path, self.info.classes)

    def clip_ids(self, split: str) -> list[str]:
        io.check_split_arg(split)
        return [u for u, r in self._rows.items() if r.split == split and r.label in self.subsets]

    def clip_dir(self, clip_id: str) -> Path:
        """The clip's folder: `{label}/{uid}` or the doubled `{label}/{label}/{uid}`."""
        label = self._row(clip_id).label
        for d in (self.root / label / clip_id, self.root / label / label / clip_id):
            if d.is_dir():
                return d
        raise fail(self.root / label / clip_id, f"missing clip folder (also tried {label}/{label}/{clip_id})")

    def _row(self, clip_id: str) -> AVSSRow:
        if clip_id not in self._rows:
            raise fail(self.csv_path, f"no row for uid {clip_id}")
        return self._rows[clip_id]

    def _mask(self, d: Path, i: int, hw: tuple[int, int]) -> np.ndarray | None:
        sem, rgb = d / "labels_semantic" / f"{i}.png", d / "labels_rgb" / f"{i}.png"
        if sem.is_file():
            m = io.read_index_png(sem, "semantic mask")
            if m.max(initial=0) > len(self.info.classes):
                raise fail(sem, f"class index {int(m.max())} exceeds the {len(self.info.classes)} classes of "
                                f"{self.label2idx_path.name}")
        elif rgb.is_file():
            m = rgb_to_index(io.read_rgb(rgb, "colour mask"), len(self.info.classes) + 1)
        else:
            return None
        return io.fit_mask(m, hw)

    def load(self, clip_id: str) -> Sample:
        row = self._row(clip_id)
        d = self.clip_dir(clip_id)
        t = SUBSET_FRAMES[row.label]
        paths = [d / "frames" / f"{i}.jpg" for i in range(t)]
        frames = io.stack_frames([io.read_rgb(p) for p in paths], paths)  # (T, H, W, 3)
        hw = frames.shape[1:3]
        masks = np.zeros((t, *hw), np.uint8)  # (T, H, W)
        valid = np.zeros(t, bool)
        for i in range(t):
            m = self._mask(d, i, hw)
            if m is not None:
                masks[i], valid[i] = m, True
            elif io.scored(row.split, self.unscored):
                raise fail(d / "labels_semantic" / f"{i}.png", f"mask not found (nor labels_rgb/{i}.png); every "
                                                               f"{row.split} frame needs one (its frames are scored)")
        wave, sr = io.read_wav(d / "audio.wav")
        return Sample(
            clip_id=clip_id, split=row.split, subset=row.label, frames=frames, waveform=wave, sample_rate=sr,
            labels=io.multi_hot(row.names, self.info.classes), masks=masks, mask_valid=valid,
            visible=self._visible(d, t, hw),
        )

    def _visible(self, d: Path, t: int, hw: tuple[int, int]) -> np.ndarray | None:
        vdir = d / "visible_semantic"
        if not vdir.is_dir():
            return None
        return np.stack([io.fit_mask(io.read_index_png(vdir / f"{i}.png", "visible-objects mask"), hw)
                         for i in range(t)])

    def fingerprint(self, split: str) -> str:
        ids = self.clip_ids(split)
        dirs = []
        for u in ids:
            label = self._rows[u].label
            dirs += [self.root / label / u, self.root / label / label / u]  # whichever exists is listed
        return io.fingerprint(self.root, io.list_files(dirs), [self.csv_path, self.label2idx_path], ids)

    def iter_split(self, split: str) -> Iterator[Sample]:
        return io.iter_samples(self, split)
