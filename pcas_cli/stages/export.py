"""`pcas export`: a predictions artifact -> one PNG mask per frame (and the frame with its mask blended in), to look
at the segmentations or use them outside pcas.

What it writes (at the features' resolution, `pcas extract --image-size`):

    out/export.json                  what was exported: the predictions' file, artifact id and provenance, the classes
    out/<clip_id>/masks/{t}.png      semantic data: a palette PNG whose pixel values are class indices (0 = background,
                                     k = classes[k-1]) shown in the PASCAL-VOC colours of AVSBench's labels_rgb, so
                                     it reads back as a class-index mask; binary data (S4, MS3): 0 / 255 grey, as
                                     AVSBench's own binary masks
    out/<clip_id>/overlays/{t}.png   the frame with the mask's colours blended in (unless --no-overlays)

t counts the clip's real frames from 0 (AVSS's frames/{t}.jpg; S4 / MS3 number theirs from 1); padding frames of
short clips are skipped. The folder is written under a hidden name beside `out` and renamed into place when complete,
so a killed export leaves no half `out`, and an earlier export there is replaced only then.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pcas_cli.artifacts import ArtifactReader, read_features, read_predictions
from pcas_cli.console import CONSOLE, progress
from pcas_cli.datasets.palette import index_to_rgb, voc_palette
from pcas_cli.errors import PcasError, fail
from pcas_cli.stages.evaluate import check_compatible
from pcas_cli.writing import write_json

MANIFEST = "export.json"
PALETTE = voc_palette(256).reshape(-1).tolist()  # flat [r, g, b, ...] for PIL's putpalette, built once


@dataclass(frozen=True)
class ExportConfig:
    predictions: Path  # predictions artifact (pseudo-label, crf, train-supervised, train-seg, baseline)
    features: Path  # the same split's features artifact: its frames, and which frames are real
    out: Path  # folder to write (replaced when it holds an earlier export; refused when it holds anything else)
    overlays: bool = True  # also write each frame with its mask blended in
    alpha: float = 0.5  # opacity of the mask colours in the overlays

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise PcasError(f"alpha must be in 0..1, got {self.alpha}")


def mask_image(mask: np.ndarray, task: str) -> Image.Image:
    """(H, W) class indices -> a PNG image: palette-coloured indices (semantic) or 0 / 255 grey (binary)."""
    if task == "binary":
        return Image.fromarray(((mask > 0) * 255).astype(np.uint8))  # a 2-D uint8 array: mode L
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(PALETTE)  # L -> P: the values stay, now shown in colour
    return image


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W, 3) frame with the mask's palette colours blended in at opacity `alpha` off the background."""
    colours = index_to_rgb(mask)  # (H, W, 3); binary masks' 1 gets the palette's first colour
    fg = (mask > 0)[..., None]
    mixed = (1 - alpha) * frame.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.where(fg, np.rint(mixed), frame).astype(np.uint8)


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (it may be the user's data)."""
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise fail(out, f"exists and is not an earlier pcas export (no {MANIFEST}); choose another --out")


def _clip_folder(out: Path, clip_id: str, predictions: Path) -> Path:
    if not clip_id or clip_id in (".", "..") or "/" in clip_id or "\\" in clip_id:
        raise fail(predictions, f"clip id {clip_id!r} cannot name a folder")
    return out / clip_id


def write_clip(folder: Path, masks: np.ndarray, frames: np.ndarray | None, frame_valid: np.ndarray, task: str,
               alpha: float) -> int:
    """Write one clip's real frames (masks (T, H, W), frames (T, H, W, 3) or None); returns how many."""
    (folder / "masks").mkdir(parents=True)
    if frames is not None:
        (folder / "overlays").mkdir()
    real = np.flatnonzero(frame_valid)
    for t, row in enumerate(real):
        mask_image(masks[row], task).save(folder / "masks" / f"{t}.png")
        if frames is not None:
            Image.fromarray(overlay(frames[row], masks[row], alpha)).save(folder / "overlays" / f"{t}.png")
    return len(real)


def _manifest(cfg: ExportConfig, feats: ArtifactReader, preds: ArtifactReader, task: str, frames: int) -> dict:
    classes = ["background", *preds.meta["classes"]]
    return {
        "predictions": str(cfg.predictions), "predictions_artifact_id": preds.artifact_id,
        "features": str(cfg.features), "features_artifact_id": feats.artifact_id,
        "task": task, "classes": classes, "clips": len(preds), "frames": frames, "overlays": cfg.overlays,
        "masks": "0 / 255 grey (255 = sounding)" if task == "binary" else
                 "palette PNG: pixel value = index into classes; colours = PASCAL-VOC palette",
        "predictions_provenance": preds.provenance,
    }


def run(cfg: ExportConfig) -> Path:
    feats, preds = read_features(cfg.features), read_predictions(cfg.predictions)
    task = check_compatible(feats, preds)  # same clips, frames, classes; refuses predictions of other features
    out = Path(cfg.out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a fresh hidden name beside `out` (a killed export leaves only that, never a half `out`).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    frames_written = 0
    with feats, preds, progress() as bar:
        job = bar.add_task(f"export {Path(cfg.predictions).name}", total=len(preds), info="")
        for i in range(len(preds)):  # check_compatible: same clips in the same order
            clip = feats.clip(i, ("frame_valid",) + (("frames",) if cfg.overlays else ()))
            folder = _clip_folder(tmp, preds.read("clip_id", i), cfg.predictions)
            frames_written += write_clip(folder, preds.read("masks", i), clip.get("frames"), clip["frame_valid"],
                                         task, cfg.alpha)
            bar.advance(job)
        write_json(tmp / MANIFEST, _manifest(cfg, feats, preds, task, frames_written))
    if out.exists():  # an earlier export (_check_out): replaced only now that the new one is complete
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        out.rename(old / out.name)
        shutil.rmtree(old)
    tmp.rename(out)
    CONSOLE.print(f"[green]wrote[/green] {out} ({len(preds)} clips, {frames_written} frames)")
    return out
