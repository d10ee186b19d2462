"""Reader for the AVSBench multi-source (MS3) layout: binary masks, video labels from an AVSS metadata.csv.

Layout (docs/reference/avsbench-facts.md, section 1), under `avsbench_data/Multi-sources/`:

    ms3_meta_data.csv    read by column POSITION after a header row: [0] video id, [1] split
    ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png        NO split folder; the `.mp4_` infix is real
    ms3_data/audio_wav/{split}/{name}.wav
    ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png         0/255, all 5 frames in every split

MS3 has no category column (AVSBench issue #11). Video-level labels come from an AVSS-format metadata.csv
(`labels_csv`, default `<root>/metadata.csv`): its rows with label = v1m whose uid is the MS3 video id, column a_obj.
Class list: if a `label2idx.json` lies beside that CSV, its keys (background dropped, key order) - the AVSS
vocabulary, so MS3 class ids match AVSS ones; otherwise the sorted union of the class names in the v1m rows.
Masks read as in the S4 reader ({0, 1}, grey >= 128, resized nearest to the frame if sizes differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from pcas_cli.datasets import _common as io
from pcas_cli.datasets.avss import read_label2idx, read_metadata
from pcas_cli.datasets.s4 import read_binary_masks
from pcas_cli.datasets.sample import DatasetInfo, Sample
from pcas_cli.errors import fail

MS3_FRAMES = 5


@dataclass(frozen=True)
class MS3Row:
    name: str
    split: str
    names: tuple[str, ...]  # sounding classes from the labels CSV


class MS3Adapter:
    """AVSBench MS3 reader (task "binary", 5 frames per clip).

    Args:
        root: the `Multi-sources/` folder holding ms3_meta_data.csv and ms3_data/.
        labels_csv: AVSS-format metadata.csv with the video-level labels (default `<root>/metadata.csv`).
        unscored: splits whose frames may lack masks (mask_valid False): they can be labelled but not scored.
    """

    def __init__(self, root: Path, labels_csv: Path | str | None = None, unscored: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.unscored = frozenset(unscored)
        if not self.root.is_dir():
            raise fail(self.root, "dataset root does not exist")
        self.csv_path = self.root / "ms3_meta_data.csv"
        self.data = self.root / "ms3_data"
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "metadata.csv"
        if not self.labels_csv.is_file():
            raise fail(self.labels_csv, "missing video-level labels: MS3 has no category column, pass "
                                        "labels_csv=<the AVSBench-semantic metadata.csv> (rows with label v1m)")
        self.label2idx_path = self.labels_csv.parent / "label2idx.json"
        classes, labels = self._read_labels()
        self.info = DatasetInfo(name="ms3", task="binary", classes=classes, max_frames=MS3_FRAMES)
        self._rows = self._read_rows(labels)

    def _read_labels(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """(class list, MS3 id -> class names) from the v1m rows of the labels CSV."""
        known = read_label2idx(self.label2idx_path) if self.label2idx_path.is_file() else None
        v1m = {u: r.names for u, r in read_metadata(self.labels_csv, known).items() if r.label == "v1m"}
        if known is not None:
            return known, v1m
        classes = tuple(sorted({n for names in v1m.values() for n in names}))
        if not classes:
            raise fail(self.labels_csv, "no class names in the a_obj column of its v1m rows")
        return classes, v1m

    def _read_rows(self, labels: dict[str, tuple[str, ...]]) -> dict[str, MS3Row]:
        header, rows = io.read_csv(self.csv_path)
        if len(header) < 2:
            raise fail(self.csv_path, f"missing column: need video id, split by position, header has {len(header)}")
        out: dict[str, MS3Row] = {}
        missing: list[str] = []
        for n, r in enumerate(rows, start=2):
            if len(r) < 2:
                raise fail(self.csv_path, f"line {n}: {len(r)} fields, need at least 2")
            name, split = r[0], r[1]
            io.check_split(self.csv_path, split, f"line {n} ({name})")
            if name in out:
                raise fail(self.csv_path, f"duplicate video id {name}")
            if name not in labels:
                missing.append(name)
                continue
            out[name] = MS3Row(name=name, split=split, names=labels[name])
        if missing:
            raise fail(self.labels_csv, f"no v1m row for {len(missing)} MS3 video(s) of {self.csv_path.name}, "
                                        f"e.g. {', '.join(missing[:3])}")
        return out

    def clip_ids(self, split: str) -> list[str]:
        io.check_split_arg(split)
        return [n for n, r in self._rows.items() if r.split == split]

    def _row(self, clip_id: str) -> MS3Row:
        if clip_id not in self._rows:
            raise fail(self.csv_path, f"no row for video {clip_id}")
        return self._rows[clip_id]

    def _paths(self, r: MS3Row) -> tuple[Path, Path, Path]:
        """(frame folder, wav, mask folder) of one clip; frames have no split folder."""
        return (self.data / "visual_frames" / r.name, self.data / "audio_wav" / r.split / f"{r.name}.wav",
                self.data / "gt_masks" / r.split / r.name)

    def load(self, clip_id: str) -> Sample:
        r = self._row(clip_id)
        frame_dir, wav, mask_dir = self._paths(r)
        paths = [frame_dir / f"{r.name}.mp4_{k}.png" for k in range(1, MS3_FRAMES + 1)]
        frames = io.stack_frames([io.read_rgb(p) for p in paths], paths)  # (T, H, W, 3)
        masks, valid = read_binary_masks([mask_dir / f"{r.name}_{k}.png" for k in range(1, MS3_FRAMES + 1)],
                                         frames.shape[1:3], r.split,
                                         io.scored(r.split, self.unscored))
        wave, sr = io.read_wav(wav)
        return Sample(clip_id=r.name, split=r.split, subset="ms3", frames=frames, waveform=wave, sample_rate=sr,
                      labels=io.multi_hot(r.names, self.info.classes), masks=masks, mask_valid=valid)

    def fingerprint(self, split: str) -> str:
        ids = self.clip_ids(split)
        files = io.list_files(p for n in ids for p in self._paths(self._rows[n]))
        meta = [self.csv_path, self.labels_csv, self.label2idx_path]
        return io.fingerprint(self.root, files, meta, ids)

    def iter_split(self, split: str) -> Iterator[Sample]:
        return io.iter_samples(self, split)
