"""`pcas crf`: refine a predictions artifact with a dense CRF on the RGB frames of its features artifact.

For every valid frame the soft scores (K, H, W) become CRF marginals over background plus the classes present in
that frame (channels whose maximum score exceeds `present_eps`; the others stay 0), and the hard mask becomes their
argmax (binary tasks: 0/1). Padding frames (frame_valid False) are copied unchanged, as are the per-frame sounding
class probabilities. The CRF runs in worker processes (pydensecrf holds the GIL) and the output is streamed clip by
clip; an interrupted run resumes from its leftover `.tmp` file when the provenance is unchanged.
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
from pcas_cli.provenance import check_inputs, make_provenance
from pcas_cli.seed import seed_everything

# Config fields that do not change what the stage writes (where, how fast, whether to resume). They are left out of
# the provenance, so an interrupted run can resume with another worker count and the same inputs and settings give
# the same artifact_id wherever the file is written.
_NOT_RECORDED = ("out", "workers", "resume")


@dataclass(frozen=True)
class CRFConfig:
    features: Path  # features artifact (pcas extract) holding the RGB frames
    predictions: Path  # predictions artifact to refine (pcas pseudo-label, a baseline or a model)
    out: Path  # refined predictions artifact to write
    preset: str = "toco_cam"  # CRF kernel preset: toco_cam | toco_seg | psa (pcas_cli.crf.CRF_PRESETS)
    sxy_scale: float = 1.0  # multiply the preset's spatial widths (pixels); e.g. 0.25 for 112-px frames vs 448 px
    present_eps: float = 0.01  # a class enters a frame's CRF only if its max score there exceeds this
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


def crf_params(cfg: CRFConfig) -> CRFParams:
    try:
        params = get_preset(cfg.preset)
    except ValueError as e:
        raise fail(None, f"crf.preset: {e}") from None
    return params if cfg.sxy_scale == 1.0 else params.scaled(cfg.sxy_scale)


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


def _provenance(cfg: CRFConfig, params: CRFParams, feats: ArtifactReader, preds: ArtifactReader) -> dict:
    config = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_RECORDED}
    config["crf_params"] = to_dict(params)
    return make_provenance("crf", config, cfg.seed, {str(cfg.features): feats.artifact_id,
                                                     str(cfg.predictions): preds.artifact_id})


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


def run(cfg: CRFConfig) -> Path:
    """Refine `cfg.predictions` with the frames of `cfg.features`; write `cfg.out`."""
    seed_everything(cfg.seed)
    params = crf_params(cfg)
    workers = resolve_workers(cfg.workers)
    feats, preds = read_features(cfg.features), read_predictions(cfg.predictions)
    rows = check_pair(feats, preds)
    check_inputs(cfg.predictions, preds.provenance.get("inputs", {}), {str(cfg.features): feats.artifact_id})
    prov = _provenance(cfg, params, feats, preds)
    with (ArtifactWriter(cfg.out, "predictions", preds.dims, preds.meta, prov, resume=cfg.resume) as writer,
          progress() as bar):
        if writer.start:
            CONSOLE.print(f"resuming {cfg.out}: {writer.start} of {len(preds)} clips already refined")
        task = bar.add_task(f"crf {cfg.preset}", total=len(preds), completed=writer.start, info=f"{workers} proc")
        queue: collections.deque[_Clip] = collections.deque()

        def write_done() -> None:
            while queue and queue[0].remaining == 0:
                writer.append(**queue.popleft().record)
                bar.advance(task)

        jobs = _frames(feats, preds, rows, writer.start, cfg.present_eps, queue)
        # Results come back in job order, so each belongs to the oldest clip still waiting for frames; clips with
        # no valid frame are written as soon as they reach the front of the queue.
        for refined in crf_many(jobs, params, workers=workers, chunksize=max(1, int(preds.dims["T"]))):
            write_done()
            queue[0].put(refined)
            write_done()
        write_done()
        assert not queue, "every queued clip should have received all its frames"
    feats.close()
    preds.close()
    CONSOLE.print(f"[green]wrote[/green] {cfg.out}")
    return cfg.out
