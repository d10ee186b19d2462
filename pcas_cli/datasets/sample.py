"""The one sample type every dataset adapter returns, and the adapter protocol.

Mask conventions (per frame, uint8, at the frame's own resolution):
- binary datasets (S4, MS3): 0 = background, 1 = sounding object;
- semantic datasets (AVSS layout): class index, 0 = background, k = `classes[k - 1]`.
Frames beyond a clip's real length are never materialised by adapters: T is the clip's real frame count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Protocol

import numpy as np

Task = Literal["binary", "semantic"]


@dataclass(frozen=True)
class Sample:
    """One clip: T frames (one per second), its audio, its video-level labels and whatever masks exist."""

    clip_id: str  # unique within the dataset (AVSS uid, S4/MS3 video name)
    split: str  # "train" | "val" | "test"
    subset: str  # "v1s" | "v1m" | "v2" (AVSS), "s4", "ms3", or an adapter's own name
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    waveform: np.ndarray  # (S,) float32 mono in [-1, 1]
    sample_rate: int
    labels: np.ndarray  # (C,) uint8 multi-hot over DatasetInfo.classes (background excluded): video-level labels
    masks: np.ndarray  # (T, H, W) uint8, see module docstring; all-zero where mask_valid is False
    mask_valid: np.ndarray  # (T,) bool: frame t has a ground-truth mask (S4 train: frame 0 only)
    # (T, H, W) uint8 class-index map of *every visible* object, sounding or silent, when the source knows it
    # (generated data sets do, AVSBench does not). Used only by the "every visible object" reference baseline.
    visible: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # e.g. "avss", "s4", "ms3"
    task: Task
    classes: tuple[str, ...]  # object classes, background excluded; class id k (1-based) = classes[k-1]
    max_frames: int  # T used when padding clips to a common length (5 for S4/MS3, 10 for AVSS)


class Adapter(Protocol):
    """A dataset adapter: reads one on-disk layout, yields common Samples."""

    root: Path
    info: DatasetInfo

    def clip_ids(self, split: str) -> list[str]:
        """Clip ids of a split in a stable order."""
        ...

    def load(self, clip_id: str) -> Sample:
        """Read one clip from disk. Raises PcasError naming the file on bad input."""
        ...

    def fingerprint(self, split: str) -> str:
        """A cheap hash of the split's file list, sizes and mtimes (provenance of `extract`)."""
        ...

    def iter_split(self, split: str) -> Iterator[Sample]:
        ...
