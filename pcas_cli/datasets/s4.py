"""Reader for the AVSBench single-source (S4) layout: binary masks, one category per clip.

Layout (docs/reference/avsbench-facts.md, section 1), under `avsbench_data/Single-source/`:

    s4_meta_data.csv     read by column POSITION after a header row: [0] name, [1] start (s), [2] category, [3] split
    s4_data/visual_frames/{split}/{category}/{name}/{name}_{1..5}.png
    s4_data/audio_wav/{split}/{category}/{name}.wav
    s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png     train: k = 1 only; val/test: k = 1..5

Masks are 0/255 PNGs and become {0, 1} (grey >= 128 is foreground); a mask whose size differs from its frame is
resized to the frame with nearest neighbour. A train frame has a mask when its mask file exists, so S4 train clips
come out with mask_valid = [T, F, F, F, F]; a val / test frame without its mask file is an error (it would be scored),
except in the splits named `unscored` (your own videos: labelled, never scored).

Classes: the 23 official categories in their official order. If the CSV names a category outside that list (e.g. a
generated data set in this layout), the class list is instead the sorted unique categories of the whole CSV (all
splits), so that class ids are identical across splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pcas_cli.datasets import _common as io
from pcas_cli.datasets.sample import DatasetInfo, Sample
from pcas_cli.errors import fail

S4_FRAMES = 5
S4_CATEGORIES = (
    "baby_laughter", "female_singing", "male_speech", "dog_barking", "cat_meowing", "lions_roaring",
    "horse_clip-clop", "coyote_howling", "mynah_bird_singing", "playing_acoustic_guitar", "playing_tabla",
    "playing_violin", "playing_piano", "playing_ukulele", "playing_glockenspiel", "helicopter", "race_car",
    "driving_buses", "ambulance_siren", "typing_on_computer_keyboard", "chainsawing_trees", "cap_gun_shooting",
    "lawn_mowing",
)


@dataclass(frozen=True)
class S4Row:
    name: str
    category: str
    split: str


class S4Adapter:
    """AVSBench S4 reader (task "binary", 5 frames per clip).

    Args:
        root: the `Single-source/` folder holding s4_meta_data.csv and s4_data/.
        unscored: splits whose frames may lack masks (mask_valid False): they can be labelled but not scored.
    """

    def __init__(self, root: Path, unscored: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.unscored = frozenset(unscored)
        if not self.root.is_dir():
            raise fail(self.root, "dataset root does not exist")
        self.csv_path = self.root / "s4_meta_data.csv"
        self.data = self.root / "s4_data"
        self._rows = self._read_rows()
        cats = {r.category for r in self._rows.values()}
        classes = S4_CATEGORIES if cats <= set(S4_CATEGORIES) else tuple(sorted(cats))
        self.info = DatasetInfo(name="s4", task="binary", classes=classes, max_frames=S4_FRAMES)

    def _read_rows(self) -> dict[str, S4Row]:
        header, rows = io.read_csv(self.csv_path)
        if len(header) < 4:
            raise fail(self.csv_path, f"missing column: need name, start, category, split by position, "
                                      f"header has {len(header)} ({','.join(header)})")
        out: dict[str, S4Row] = {}
        for n, r in enumerate(rows, start=2):
            if len(r) < 4:
                raise fail(self.csv_path, f"line {n}: {len(r)} fields, need at least 4")
            name, category, split = r[0], r[2], r[3]
            io.check_split(self.csv_path, split, f"line {n} ({name})")
            if not category:
                raise fail(self.csv_path, f"line {n} ({name}): empty category")
            if name in out:
                raise fail(self.csv_path, f"duplicate video name {name}")
            out[name] = S4Row(name=name, category=category, split=split)
        return out

    def clip_ids(self, split: str) -> list[str]:
        io.check_split_arg(split)
        return [n for n, r in self._rows.items() if r.split == split]

    def _row(self, clip_id: str) -> S4Row:
        if clip_id not in self._rows:
            raise fail(self.csv_path, f"no row for video {clip_id}")
        return self._rows[clip_id]

    def _paths(self, r: S4Row) -> tuple[Path, Path, Path]:
        """(frame folder, wav, mask folder) of one clip."""
        rel = Path(r.split) / r.category
        return (self.data / "visual_frames" / rel / r.name, self.data / "audio_wav" / rel / f"{r.name}.wav",
                self.data / "gt_masks" / rel / r.name)

    def load(self, clip_id: str) -> Sample:
        r = self._row(clip_id)
        frame_dir, wav, mask_dir = self._paths(r)
        paths = [frame_dir / f"{r.name}_{k}.png" for k in range(1, S4_FRAMES + 1)]
        frames = io.stack_frames([io.read_rgb(p) for p in paths], paths)  # (T, H, W, 3)
        masks, valid = read_binary_masks([mask_dir / f"{r.name}_{k}.png" for k in range(1, S4_FRAMES + 1)],
                                         frames.shape[1:3], r.split,
                                         io.scored(r.split, self.unscored))
        wave, sr = io.read_wav(wav)
        return Sample(clip_id=r.name, split=r.split, subset="s4", frames=frames, waveform=wave, sample_rate=sr,
                      labels=io.multi_hot([r.category], self.info.classes), masks=masks, mask_valid=valid)

    def fingerprint(self, split: str) -> str:
        ids = self.clip_ids(split)
        files = io.list_files(p for n in ids for p in self._paths(self._rows[n]))
        return io.fingerprint(self.root, files, [self.csv_path], ids)

    def iter_split(self, split: str) -> Iterator[Sample]:
        return io.iter_samples(self, split)


def read_binary_masks(paths: list[Path], hw: tuple[int, int], split: str, required: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Read the per-frame 0/255 masks: ((T, H, W) uint8 {0,1}, (T,) bool mask_valid).

    Train frames may lack masks (S4 train has only the first; weak supervision needs none). Every val / test frame
    is scored (`required`), so a missing one is an error rather than a frame silently left out of the metric.
    """
    masks = np.zeros((len(paths), *hw), np.uint8)
    valid = np.zeros(len(paths), bool)
    for t, p in enumerate(paths):
        if p.is_file():
            masks[t], valid[t] = io.fit_mask(io.read_binary_png(p), hw), True
        elif required:
            raise fail(p, f"mask not found; every {split} frame needs one (its frames are scored)")
    return masks, valid
