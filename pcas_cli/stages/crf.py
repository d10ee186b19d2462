"""`pcas crf`: refine a predictions artifact with a dense CRF on the RGB frames of its features artifact.

For every valid frame the soft scores (K, H, W) become CRF marginals over background plus the classes present in
that frame (channels whose maximum score exceeds `present_eps`; the others stay 0), and the hard mask becomes their
argmax (binary tasks: 0/1). Padding frames (frame_valid False) are copied unchanged, as are the per-frame sounding
class probabilities. The CRF runs in worker processes (pydensecrf holds the GIL) and the output is streamed clip by
clip; an interrupted run resumes from its leftover `.tmp` file when the provenance is unchanged.

With `choose_on_val` the kernel is not fixed in advance: every candidate in `candidates` (a preset, a preset with
scaled spatial widths, or no CRF at all) refines the val split's predictions, the one with the best val mIoU (the
task's official metric) refines this artifact, and the whole comparison is stored in its provenance. Only the val
masks are read, to choose, as pseudo-label chooses its thresholds (method-facts: thresholds on val, never on test).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pcas_cli.artifacts import ArtifactReader, ArtifactWriter, read_features, read_predictions
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.crf import CRFParams, crf_many, get_preset, resolve_workers
from pcas_cli.errors import fail
from pcas_cli.metrics import BinaryMIoU, SemanticScores
from pcas_cli.provenance import check_input_file, check_made_alike, make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages.evaluate import check_compatible

# Config fields that do not change what the stage writes (where, how fast, whether to resume). They are left out of
# the provenance, so an interrupted run can resume with another worker count and the same inputs and settings give
# the same artifact_id wherever the file is written.
_NOT_RECORDED = ("out", "workers", "resume")


@dataclass(frozen=True)
class CRFConfig:
    features: Path  # features artifact (pcas extract) holding the RGB frames
    predictions: Path  # predictions artifact to refine (pcas pseudo-label, a baseline or a model)
    out: Path  # refined predictions artifact to write
    preset: str = "toco_cam"  # kernel unless choose_on_val: toco_cam | toco_seg | psa (pcas_cli.crf.CRF_PRESETS),
    # optionally "@<sxy_scale>", or none
    sxy_scale: float = 1.0  # multiply the preset's spatial widths (pixels); e.g. 0.25 for 112-px frames vs 448 px
    present_eps: float = 0.01  # a class enters a frame's CRF only if its max score there exceeds this
    choose_on_val: bool = False  # choose the kernel among `candidates` by val mIoU (the val.h5 next to `features` and
    # next to `predictions`), instead of `preset` / `sxy_scale`
    candidates: tuple[str, ...] = ("none", "toco_cam", "toco_cam@0.25", "toco_seg", "toco_seg@0.25", "psa",
                                   "psa@0.25")  # "<preset>[@<sxy_scale>]", or "none" (no CRF)
    workers: int = 0  # CRF worker processes (0 = number of cores, 1 = serial)
    seed: int = 0  # stored in the provenance (the CRF itself is deterministic)
    resume: bool = True  # continue an interrupted run's leftover .tmp when its provenance matches


@dataclass
class _Clip:
    """A clip being refined: its predictions row and how many refined frames it still waits for."""

    record: dict[str, Any]
    valid: list[int] = field(default_factory=list)
    filled: int = 0

    @property
    def remaining(self) -> int:
        return len(self.valid) - self.filled

    def put(self, refined: np.ndarray) -> None:
        t = self.valid[self.filled]
        self.record["scores"][t] = refined  # (K, H, W)
        self.record["masks"][t] = refined.argmax(axis=0)  # (H, W)
        self.filled += 1


def parse_kernel(text: str) -> CRFParams | None:
    """"<preset>" or "<preset>@<sxy_scale>" -> its parameters; "none" -> None (no CRF)."""
    name, _, scale = text.partition("@")
    if name == "none" and not scale:
        return None
    try:
        params = get_preset(name)
        return params.scaled(float(scale)) if scale else params
    except ValueError as e:
        raise fail(None, f"crf kernel {text!r}: {e}") from None


def fixed_kernel(cfg: CRFConfig) -> CRFParams | None:
    """The kernel of `preset` and `sxy_scale` (None for preset "none")."""
    params = parse_kernel(cfg.preset)
    if params is None or cfg.sxy_scale == 1.0:
        return params
    try:
        return params.scaled(cfg.sxy_scale)
    except ValueError as e:
        raise fail(None, f"crf.sxy_scale: {e}") from None


def as_probs(scores: np.ndarray) -> np.ndarray:
    """(K, H, W) stored scores -> float32 probabilities summing to 1 per pixel (all-zero pixels -> background)."""
    p = np.clip(scores.astype(np.float32), 0.0, None)  # (K, H, W)
    total = p.sum(axis=0, keepdims=True)  # (1, H, W)
    empty = total[0] <= 0
    p[0][empty] = 1.0
    total[0][empty] = 1.0
    return p / total


def present_channels(probs: np.ndarray, eps: float) -> list[int]:
    """Class channels (1..K-1) whose maximum probability over the frame exceeds eps."""
    peak = probs[1:].reshape(probs.shape[0] - 1, -1).max(axis=1) if probs.shape[0] > 1 else np.zeros(0)
    return [int(c) + 1 for c in np.flatnonzero(peak > eps)]


def check_pair(feats: ArtifactReader, preds: ArtifactReader) -> dict[str, int]:
    """Refuse a predictions artifact that does not describe the features' clips and frames; map clip id -> row."""
    for dim in ("T", "H", "W"):
        if feats.dims.get(dim) != preds.dims.get(dim):
            raise fail(preds.path, f"{dim}={preds.dims.get(dim)} but the features {feats.path} have "
                                   f"{dim}={feats.dims.get(dim)}")
    feat_rows = {cid: i for i, cid in enumerate(feats.clip_ids())}
    pred_ids = preds.clip_ids()
    missing = [cid for cid in pred_ids if cid not in feat_rows]
    if missing or len(set(pred_ids)) != len(feat_rows):
        extra = sorted(set(feat_rows) - set(pred_ids))
        raise fail(preds.path, f"clip ids differ from the features {feats.path}: {len(missing)} unknown "
                               f"(e.g. {missing[:3]}), {len(extra)} not predicted (e.g. {extra[:3]})")
    return feat_rows


def _provenance(cfg: CRFConfig, params: CRFParams | None, inputs: dict[str, str], choice: dict[str, Any] | None
                ) -> dict:
    config = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_RECORDED}
    config["crf_params"] = to_dict(params) if params is not None else None
    prov = make_provenance("crf", config, cfg.seed, inputs)
    if choice is not None:
        prov["crf_choice"] = choice
    return prov


def _frames(feats: ArtifactReader, preds: ArtifactReader, rows: dict[str, int], start: int, eps: float,
            queue: collections.deque[_Clip]) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """CRF jobs for clips start.. in predictions order; each clip is queued before its first frame is yielded."""
    for i in range(start, len(preds)):
        record = preds.clip(i)
        fi = rows[record["clip_id"]]
        frames = feats.read("frames", fi)  # (T, H, W, 3) uint8
        valid = np.flatnonzero(feats.read("frame_valid", fi)).tolist()
        record["scores"] = record["scores"].astype(np.float32)  # (T, K, H, W); written back as float16
        record["masks"] = record["masks"].copy()  # (T, H, W)
        clip = _Clip(record, valid)
        queue.append(clip)
        for t in valid:
            probs = as_probs(record["scores"][t])  # (K, H, W)
            yield frames[t], probs, present_channels(probs, eps)


def refined_clips(feats: ArtifactReader, preds: ArtifactReader, rows: dict[str, int], start: int,
                  params: CRFParams | None, workers: int, eps: float) -> Iterator[dict[str, Any]]:
    """The predictions' clip records from `start` on, in order, refined by the CRF (unchanged when params is None)."""
    if params is None:
        yield from (preds.clip(i) for i in range(start, len(preds)))
        return
    queue: collections.deque[_Clip] = collections.deque()
    jobs = _frames(feats, preds, rows, start, eps, queue)
    # Results come back in job order, so each belongs to the oldest clip still waiting for frames; clips with no
    # valid frame are done as soon as they reach the front of the queue.
    for refined in crf_many(jobs, params, workers=workers, chunksize=max(1, int(preds.dims["T"]))):
        while queue and queue[0].remaining == 0:
            yield queue.popleft().record
        queue[0].put(refined)
    while queue:
        assert queue[0].remaining == 0, "every queued clip should have received all its frames"
        yield queue.popleft().record


def _open_pair(features: Path, predictions: Path) -> tuple[ArtifactReader, ArtifactReader, dict[str, int]]:
    feats, preds = read_features(features), read_predictions(predictions)
    rows = check_pair(feats, preds)
    check_input_file(predictions, preds.provenance.get("inputs", {}), features, feats.artifact_id)
    return feats, preds, rows


def choose_kernel(cfg: CRFConfig, workers: int, made: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The candidate with the best val mIoU; returns it, the comparison (for the provenance) and the val inputs.

    `made` is the provenance of the predictions to refine: the val predictions must have been made alike.
    """
    if not cfg.candidates:
        raise fail(None, "crf.candidates is empty; list kernels to choose from, e.g. [\"none\", \"toco_cam\"]")
    kernels = {c: parse_kernel(c) for c in cfg.candidates}
    val_feats, val_preds = Path(cfg.features).with_name("val.h5"), Path(cfg.predictions).with_name("val.h5")
    for path in (val_feats, val_preds):
        if not path.exists():
            raise fail(path, "not found: choose_on_val needs the val split's features and predictions next to "
                             "the ones refined (or pass --set choose_on_val=false)")
    feats, preds, rows = _open_pair(val_feats, val_preds)
    check_made_alike(cfg.predictions, val_preds, made, preds.provenance)
    task = check_compatible(feats, preds)
    semantic = task == "semantic"  # binary tasks are scored on foreground vs background, as `pcas eval` does
    miou: dict[str, float] = {}
    with feats, preds, progress(transient=True) as bar:
        job = bar.add_task("crf: choosing the kernel on val", total=len(kernels) * len(preds), info="")
        for name, params in kernels.items():
            acc = SemanticScores(int(preds.dims["K"])) if semantic else BinaryMIoU()
            for record in refined_clips(feats, preds, rows, 0, params, workers, cfg.present_eps):
                gt = feats.clip(rows[record["clip_id"]], ("masks", "mask_valid"))
                pred, truth = record["masks"][gt["mask_valid"]], gt["masks"][gt["mask_valid"]]
                if semantic:
                    acc.update(pred, truth)
                else:
                    acc.update(pred > 0, truth > 0)
                bar.advance(job)
            miou[name] = float(acc.result()["miou"])
        inputs = {str(val_feats): feats.artifact_id, str(val_preds): preds.artifact_id}
    best = max(cfg.candidates, key=lambda c: miou[c])  # ties: the earlier candidate ("none" first: no CRF)
    CONSOLE.print("crf kernels on val (mIoU x100): " + ", ".join(f"{c} {100 * v:.2f}" for c, v in miou.items())
                  + f"; chosen: {best}")
    return best, {"chosen": best, "val_miou": miou}, inputs


def run(cfg: CRFConfig) -> Path:
    """Refine `cfg.predictions` with the frames of `cfg.features`; write `cfg.out`."""
    seed_everything(cfg.seed)
    workers = resolve_workers(cfg.workers)
    feats, preds, rows = _open_pair(cfg.features, cfg.predictions)
    inputs = {str(cfg.features): feats.artifact_id, str(cfg.predictions): preds.artifact_id}
    choice = None
    if cfg.choose_on_val:
        kernel, choice, val_inputs = choose_kernel(cfg, workers, preds.provenance)
        params = parse_kernel(kernel)
        inputs.update(val_inputs)
    else:
        kernel, params = cfg.preset, fixed_kernel(cfg)
    prov = _provenance(cfg, params, inputs, choice)
    with (ArtifactWriter(cfg.out, "predictions", preds.dims, preds.meta, prov, resume=cfg.resume) as writer,
          progress() as bar):
        if writer.start:
            CONSOLE.print(f"resuming {cfg.out}: {writer.start} of {len(preds)} clips already refined")
        task = bar.add_task(f"crf {kernel}", total=len(preds), completed=writer.start, info=f"{workers} proc")
        for record in refined_clips(feats, preds, rows, writer.start, params, workers, cfg.present_eps):
            writer.append(**record)
            bar.advance(task)
    feats.close()
    preds.close()
    CONSOLE.print(f"[green]wrote[/green] {cfg.out}")
    return cfg.out
