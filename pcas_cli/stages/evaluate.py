"""`pcas eval`: score a predictions artifact against the ground-truth masks of a features artifact.

Official AVSBench protocols (pcas_cli.metrics; docs/reference/avsbench-facts.md section 2):
- binary task (S4/MS3, or any dataset scored as sounding vs not): mIoU from the hard `masks`, F-score from the
  foreground probability `scores[:, 1]`, over the frames that have a ground-truth mask (`mask_valid`). The official
  F takes the max per test batch of `f_batch_frames` frames (20 = 4 videos x 5 frames); the batch-independent F is
  reported next to it. A semantic features artifact is scored as binary with ground truth = any non-background class.
- semantic task (AVSS): per-class IoU/F from the hard `masks`, averaged over all classes, background included.
  By default only frames with a ground-truth mask are scored. `avss_padded_frames = true` follows the official
  test in also scoring the zero-image padding frames (frame_valid False, all-background ground truth) of 5 s clips,
  but only approximately: pcas predicts all background there by construction (pseudo-label excludes every class on
  padding, the CRF copies it), where the official model runs on the black frames and may predict objects, so the
  background term comes out optimistic.

Clips are streamed one at a time, so memory does not grow with the split. The JSON is written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.table import Table

from pcas_cli.artifacts import ArtifactReader, read_features, read_predictions, require_masks
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError, fail
from pcas_cli.metrics import (F_BATCH_FRAMES, F_BETA2, F_NUM_THRESHOLDS, BinaryFScore, BinaryMIoU, SemanticScores,
                              BOOTSTRAP_RESAMPLES, bootstrap_miou, percentile_interval)
from pcas_cli.provenance import check_input_file, make_provenance


@dataclass(frozen=True)
class EvalConfig:
    features: Path  # features artifact holding the ground-truth masks (features/{split}.h5)
    predictions: Path  # predictions artifact to score (e.g. crf/{split}.h5)
    out: Path | None = None  # metrics JSON; None = next to the predictions, <predictions>.metrics.json
    f_batch_frames: int = F_BATCH_FRAMES  # binary F: frames per test batch (official: 4 videos x 5 frames = 20)
    avss_padded_frames: bool = False  # semantic: also score padded frames, as the official AVSS test does (quirk)
    name: str = ""  # row label in tables and the JSON; "" = the predictions' folder name


# ----------------------------------------------------------------------------------------------------------------------
# Compatibility checks: refuse to score predictions that do not belong to the ground truth
# ----------------------------------------------------------------------------------------------------------------------

def _meta(reader: ArtifactReader, key: str) -> Any:
    if key not in reader.meta:
        raise fail(reader.path, f"meta has no {key!r}; re-create the artifact")
    return reader.meta[key]


def _check_ids(features: ArtifactReader, predictions: ArtifactReader) -> None:
    ids_f, ids_p = features.clip_ids(), predictions.clip_ids()
    if ids_f == ids_p:
        return
    if sorted(ids_f) == sorted(ids_p):
        i = next(i for i, (a, b) in enumerate(zip(ids_f, ids_p)) if a != b)
        raise fail(predictions.path, f"same clips as {features.path} but in another order (position {i}: "
                                     f"{ids_p[i]!r} vs {ids_f[i]!r}); re-create the predictions from these features")
    missing, extra = sorted(set(ids_f) - set(ids_p)), sorted(set(ids_p) - set(ids_f))
    raise fail(predictions.path, f"clip ids differ from {features.path}: {len(ids_p)} vs {len(ids_f)} clips, "
                                 f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")


def _check_dims(features: ArtifactReader, predictions: ArtifactReader) -> None:
    for d in ("T", "H", "W"):
        if features.dims[d] != predictions.dims[d]:
            raise fail(predictions.path, f"dimension {d} = {predictions.dims[d]} but {features.path} has "
                                         f"{d} = {features.dims[d]} (dims {predictions.dims} vs {features.dims})")


def _check_classes(features: ArtifactReader, predictions: ArtifactReader, task: str) -> None:
    pred_classes = list(_meta(predictions, "classes"))
    if task == "binary":
        if pred_classes != ["sounding"] or predictions.dims["K"] != 2:
            raise fail(predictions.path, f"binary predictions need classes ['sounding'] and K = 2, found "
                                         f"{pred_classes[:5]} and K = {predictions.dims['K']}")
        return
    feat_classes = list(_meta(features, "classes"))
    if _meta(features, "task") != "semantic":
        raise fail(predictions.path, f"semantic predictions, but {features.path} holds binary masks "
                                     f"(task {features.meta['task']!r}); score binary predictions instead")
    if pred_classes != feat_classes:
        diff = next((i for i, (a, b) in enumerate(zip(pred_classes, feat_classes)) if a != b),
                    min(len(pred_classes), len(feat_classes)))
        raise fail(predictions.path, f"class list ({len(pred_classes)} classes) differs from {features.path} "
                                     f"({len(feat_classes)} classes) at position {diff}")
    if predictions.dims["K"] != len(pred_classes) + 1:
        raise fail(predictions.path, f"K = {predictions.dims['K']} but 1 + {len(pred_classes)} classes expected")


def _check_fresh(features: ArtifactReader, predictions: ArtifactReader) -> None:
    """Where the predictions record this features file as an input, its fingerprint must still match."""
    check_input_file(predictions.path, predictions.provenance.get("inputs", {}) or {}, features.path,
                     features.artifact_id)


def check_compatible(features: ArtifactReader, predictions: ArtifactReader) -> str:
    """Refuse (PcasError naming the predictions file) unless the predictions score against these features.

    Returns:
        the task, "binary" or "semantic".
    """
    task = _meta(predictions, "task")
    if task not in ("binary", "semantic"):
        raise fail(predictions.path, f"unknown task {task!r} (expected 'binary' or 'semantic')")
    _check_ids(features, predictions)
    _check_dims(features, predictions)
    _check_classes(features, predictions, task)
    _check_fresh(features, predictions)
    return task


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------

def _scored_frames(mask_valid: np.ndarray, frame_valid: np.ndarray, task: str, padded: bool) -> np.ndarray:
    # (T,) bool. The official AVSS test scores all 10 frames of every clip, padding included (avsbench-facts 2).
    if task == "semantic" and padded:
        return mask_valid | ~frame_valid
    return mask_valid


def score(features: ArtifactReader, predictions: ArtifactReader, f_batch_frames: int = F_BATCH_FRAMES,
          avss_padded_frames: bool = False, on_clip: Callable[[], None] | None = None) -> dict[str, Any]:
    """Official metrics of `predictions` against the masks in `features`, streamed clip by clip.

    Args:
        features: reader of the features artifact (ground truth).
        predictions: reader of the predictions artifact, same clips in the same order.
        f_batch_frames: binary F test-batch size in frames (official 20).
        avss_padded_frames: semantic only: also score padded frames (official AVSS quirk).
        on_clip: called after each clip (progress bars).

    Returns:
        binary: task, miou, miou_per_frame, fscore, fscore_batch_independent, frames_scored, batches, nonempty_frames.
        semantic: task, miou, fscore, miou_present, fscore_present, per_class {class: {iou, fscore, frames,
        gt_frames}}, frames_scored, padded_frames_scored. Both: miou_ci95, the 95% bootstrap interval of the mIoU
        over clips (binary: of miou_per_frame), and clips {ids, iou_sum, count} behind it (scored clips only; see
        metrics.bootstrap_miou). All scores are fractions in [0, 1].
    """
    task = check_compatible(features, predictions)
    require_masks(features, "there is nothing to score (`pcas export` writes the predicted masks as images)")
    classes = ["background", *(["sounding"] if task == "binary" else list(features.meta["classes"]))]
    if task == "binary":
        miou, fs = BinaryMIoU(f_batch_frames), BinaryFScore(f_batch_frames)
    else:
        sem = SemanticScores(len(classes))
    padded_scored = 0
    # per scored clip, for the bootstrap: its id, (C,) summed frame IoUs and frames counted (binary: C = 1)
    clip_ids, clip_iou_sum, clip_count = [], [], []
    ids = features.clip_ids()
    for i in range(len(features)):
        gt = features.clip(i, ("masks", "mask_valid", "frame_valid"))
        keep = _scored_frames(gt["mask_valid"], gt["frame_valid"], task, avss_padded_frames)  # (T,)
        padded_scored += int((keep & ~gt["frame_valid"]).sum())
        if keep.any():
            clip_ids.append(ids[i])
            masks_gt = gt["masks"][keep]  # (n, H, W)
            if task == "binary":
                pred = predictions.clip(i, ("masks", "scores"))
                gt_fg = masks_gt > 0  # a semantic ground truth scored as binary: any object class is foreground
                iou = miou.update(pred["masks"][keep] > 0, gt_fg)
                fs.update(pred["scores"][keep, 1].astype(np.float32), gt_fg)  # (n, H, W) foreground probability
                clip_iou_sum.append([float(iou.sum())])
                clip_count.append([len(iou)])
            else:
                iou_sum, count = sem.update(predictions.read("masks", i)[keep], masks_gt)
                clip_iou_sum.append(iou_sum.tolist())
                clip_count.append(count.tolist())
        if on_clip is not None:
            on_clip()
    if task == "binary":
        frames = miou.frames
        result: dict[str, Any] = {"task": task, **{k: v for k, v in miou.result().items() if k != "batches"},
                                  **fs.result()}
    else:
        frames = sem.frames
        r = sem.result()
        per_class = {c: {"iou": float(r["per_class_iou"][k]), "fscore": float(r["per_class_fscore"][k]),
                         "frames": int(r["count"][k]), "gt_frames": int(r["gt_frames"][k])}
                     for k, c in enumerate(classes)}
        result = {"task": task, "miou": r["miou"], "fscore": r["fscore"], "miou_present": r["miou_present"],
                  "fscore_present": r["fscore_present"], "per_class": per_class,
                  "padded_frames_scored": padded_scored}
    if frames == 0:
        raise fail(features.path, "nothing to score: no frame has a ground-truth mask (mask_valid is all false)")
    result["frames_scored"] = frames
    result["miou_ci95"] = percentile_interval(bootstrap_miou(clip_iou_sum, clip_count))
    # the scored clips' sufficient statistics: `pcas report` compares two rows with a paired bootstrap over them
    result["clips"] = {"ids": clip_ids, "iou_sum": [[round(v, 6) for v in row] for row in clip_iou_sum],
                       "count": clip_count}
    return result


def protocol(task: str, f_batch_frames: int, avss_padded_frames: bool) -> dict[str, Any]:
    """A plain description of how the numbers were computed (stored in the JSON next to them)."""
    common = {"units": "fractions in [0, 1]; tables show x100", "beta2": F_BETA2,
              "miou_ci95": f"not official: 2.5 and 97.5 percentiles of the mIoU over {BOOTSTRAP_RESAMPLES} bootstrap "
                           "resamples of the scored clips (seed 0; binary: of the per-frame mean)"}
    if task == "binary":
        return {**common, "frames": "frames with a ground-truth mask",
                "miou": "official mask_iou on hard masks: per-frame IoU (empty GT: TN / HW), mean per test batch, "
                        "mean over batches; miou_per_frame = plain per-frame mean",
                "fscore": f"official Eval_Fmeasure on scores[:, 1]: {F_NUM_THRESHOLDS} thresholds, mean F curve over "
                          f"non-empty-GT frames of each batch of {f_batch_frames} frames, max per batch, mean over "
                          "batches (a batch with only empty GT scores 0)",
                "fscore_batch_independent": "mean F curve over all non-empty-GT frames, then max (ACL-SSL fix)",
                "f_batch_frames": f_batch_frames}
    frames = ("frames with a ground-truth mask plus padded frames (official AVSS test)" if avss_padded_frames
              else "frames with a ground-truth mask (padded frames excluded)")
    return {**common, "frames": frames, "avss_padded_frames": avss_padded_frames,
            "miou": "official AVSS: per-class IoU summed over frames / frames with union > 0, mean over all classes "
                    "incl. background (never-present classes count 0)",
            "fscore": "same as miou with per-class F (argmax masks, no threshold sweep)",
            "miou_present": "extra, not official: mean over classes present in the ground truth of a scored frame"}


# ----------------------------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def print_tables(metrics: dict[str, Any]) -> None:
    """The summary row (x100, 2 decimals) and, for semantic tasks, the per-class table."""
    binary = metrics["task"] == "binary"
    table = Table(title=f"eval {metrics['name']}")
    cols = ["name", "task", "frames", "mIoU", "mIoU 95% CI", "F"]
    cols += ["F batch-indep.", "mIoU per frame"] if binary else ["mIoU present", "F present"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("name", "task") else "right")
    extra = ([metrics["fscore_batch_independent"], metrics["miou_per_frame"]] if binary
             else [metrics["miou_present"], metrics["fscore_present"]])
    lo, hi = metrics["miou_ci95"]
    table.add_row(metrics["name"], metrics["task"], str(metrics["frames_scored"]), _pct(metrics["miou"]),
                  f"{_pct(lo)} .. {_pct(hi)}", _pct(metrics["fscore"]), *map(_pct, extra))
    CONSOLE.print(table)
    if binary:
        return
    per = Table(title="per class (classes seen in predictions or ground truth)")
    for c in ("class", "IoU", "F", "frames (pred or GT)", "GT frames"):
        per.add_column(c, justify="left" if c == "class" else "right")
    unseen = 0
    for name, r in metrics["per_class"].items():
        if r["frames"] == 0:
            unseen += 1
            continue
        per.add_row(name, _pct(r["iou"]), _pct(r["fscore"]), str(r["frames"]), str(r["gt_frames"]))
    CONSOLE.print(per)
    if unseen:
        CONSOLE.print(f"{unseen} classes never occur in the scored frames; the official mean counts them as 0")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def default_out(predictions: Path) -> Path:
    """<predictions>.metrics.json next to the predictions (the CLI passes metrics/<split>.json for run folders)."""
    return predictions.with_name(predictions.stem + ".metrics.json")


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Score, print the tables, write the metrics JSON; returns the JSON's content."""
    if cfg.f_batch_frames < 1:
        raise PcasError(f"f_batch_frames must be >= 1, got {cfg.f_batch_frames}")
    features, predictions = read_features(cfg.features), read_predictions(cfg.predictions)
    out = Path(cfg.out) if cfg.out is not None else default_out(Path(cfg.predictions))
    name = cfg.name or Path(cfg.predictions).parent.name or Path(cfg.predictions).stem
    with features, predictions, progress(transient=True) as bar:
        job = bar.add_task(f"eval {name}", total=len(features), info="")
        scores = score(features, predictions, cfg.f_batch_frames, cfg.avss_padded_frames,
                       on_clip=lambda: bar.advance(job))
        inputs = {str(cfg.features): features.artifact_id, str(cfg.predictions): predictions.artifact_id}
        clips = scores.pop("clips")  # long: last in the file
        metrics = {"name": name, **scores, "features_id": features.artifact_id,
                   "predictions_id": predictions.artifact_id,
                   "protocol": protocol(scores["task"], cfg.f_batch_frames, cfg.avss_padded_frames),
                   "stage": "eval", "provenance": make_provenance("eval", to_dict(cfg), None, inputs), "clips": clips}
    print_tables(metrics)
    _write_json(out, metrics)
    CONSOLE.print(f"[green]wrote[/green] {out}")
    return metrics
