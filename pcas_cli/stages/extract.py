"""`pcas extract`: read a dataset through its adapter and write one features artifact per split.

Frames are resized to the configured square resolution (bilinear; masks nearest), clips are padded to the dataset's
`max_frames` with zero frames flagged invalid (as the official AVSS loader pads v1 clips to 10), and audio becomes one
AST-style fbank segment per second (pcas_cli.audio). Everything is streamed clip by clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pcas_cli.artifacts import ArtifactWriter
from pcas_cli.audio import FbankParams, fbank_per_second
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.datasets import open_dataset
from pcas_cli.datasets._common import fit_mask
from pcas_cli.datasets.sample import DatasetInfo, Sample
from pcas_cli.errors import PcasError
from pcas_cli.provenance import make_provenance


@dataclass(frozen=True)
class ExtractConfig:
    layout: str = "avss"  # dataset layout: avss | s4 | ms3
    root: Path = Path("data/raw/synth-avss")  # dataset root (the folder holding metadata.csv / *_meta_data.csv)
    run: Path = Path("data/runs/synth-avss")  # run folder; writes features/{split}.h5 there
    splits: tuple[str, ...] = ("train", "val", "test")  # splits to extract
    image_size: int = 80  # frames and masks are resized to image_size x image_size (paper: 224)
    subsets: tuple[str, ...] = ()  # AVSS only: keep these of v1s/v1m/v2 (empty = all)
    labels_csv: str = ""  # MS3 only: AVSS-format metadata.csv with the video-level labels (default <root>/metadata.csv)
    limit: int = 0  # extract at most this many clips per split (0 = all); for quick trials
    test_without_masks: bool = False  # your own videos: test frames may lack masks. They are labelled as usual
    # (pseudo-label, crf, train-seg; `pcas export` writes the masks as images) but never scored; val keeps its masks,
    # since the thresholds are chosen on them
    fbank: FbankParams = field(default_factory=FbankParams)  # AST fbank parameters

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise PcasError(f"image_size must be at least 1 pixel, got {self.image_size}")
        if self.limit < 0:
            raise PcasError(f"limit must be 0 (every clip) or a positive number of clips, got {self.limit}")


def _adapter_options(cfg: ExtractConfig) -> dict:
    opts: dict = {}
    if cfg.subsets:
        opts["subsets"] = cfg.subsets
    if cfg.labels_csv:
        opts["labels_csv"] = Path(cfg.labels_csv)
    if cfg.test_without_masks:
        opts["unscored"] = ("test",)
    return opts


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    # (T, h, w, 3) -> (T, size, size, 3); PIL's bilinear with antialiasing, as torchvision's Resize does.
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    return np.stack([fit_mask(m, (size, size)) for m in masks])  # nearest neighbour: class ids stay exact


def clip_record(sample: Sample, info: DatasetInfo, cfg: ExtractConfig) -> dict[str, np.ndarray | str]:
    """One features-artifact row from one Sample (padding to info.max_frames)."""
    t_real, t_max, s = sample.num_frames, info.max_frames, cfg.image_size
    if t_real > t_max:
        raise PcasError(f"{sample.clip_id}: {t_real} frames, more than the dataset's maximum {t_max}")

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((t_max - t_real, *a.shape[1:]), a.dtype)]) if t_real < t_max else a

    visible = sample.visible if sample.visible is not None else np.zeros(sample.masks.shape, np.uint8)
    return {
        "clip_id": sample.clip_id,
        "subset": sample.subset,
        "frames": pad(_resize_frames(sample.frames, s)),
        "fbank": pad(fbank_per_second(sample.waveform, sample.sample_rate, t_real, cfg.fbank).astype(np.float16)),
        "labels": sample.labels.astype(np.uint8),
        "masks": pad(_resize_masks(sample.masks, s)),
        "mask_valid": pad(sample.mask_valid.astype(bool)),
        "frame_valid": pad(np.ones(t_real, bool)),
        "visible": pad(_resize_masks(visible, s)),
    }


def extract_split(adapter, split: str, cfg: ExtractConfig) -> Path:
    info: DatasetInfo = adapter.info
    ids = adapter.clip_ids(split)
    if cfg.limit:
        ids = ids[: cfg.limit]
    if not ids:
        raise PcasError(f"{adapter.root}: split {split!r} has no clips")
    has_visible = adapter.load(ids[0]).visible is not None
    dims = {"T": info.max_frames, "H": cfg.image_size, "W": cfg.image_size, "F": cfg.fbank.frames_per_second,
            "M": cfg.fbank.num_mel_bins, "C": len(info.classes)}
    meta = {"dataset": info.name, "layout": cfg.layout, "task": info.task, "classes": list(info.classes),
            "split": split, "has_visible": has_visible, "fbank": to_dict(cfg.fbank), "root": str(adapter.root)}
    if cfg.test_without_masks and split == "test":
        meta["unscored"] = True  # artifacts.require_masks: eval and the oracle diagnostic refuse it
    prov = make_provenance("extract", to_dict(cfg), None, {f"{cfg.layout}:{split}": adapter.fingerprint(split)})
    out = Path(cfg.run) / "features" / f"{split}.h5"
    with ArtifactWriter(out, "features", dims, meta, prov) as writer, progress() as bar:
        task = bar.add_task(f"extract {split}", total=len(ids), info="")
        for clip_id in ids:
            writer.append(**clip_record(adapter.load(clip_id), info, cfg))
            bar.advance(task)
    return out


def run(cfg: ExtractConfig) -> list[Path]:
    adapter = open_dataset(cfg.layout, Path(cfg.root), **_adapter_options(cfg))
    outs = [extract_split(adapter, split, cfg) for split in cfg.splits]
    for p in outs:
        CONSOLE.print(f"[green]wrote[/green] {p}")
    return outs
