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

For thresholded predictions (pcas pseudo-label's: PCAS, the CAM and similarity baselines) the background threshold
is chosen jointly with the kernel. Pseudo-label picks that threshold by val mIoU of its own masks, before any CRF;
but the CRF's output is what "+ CRF" reports, and the threshold that is best for the masks is not the one best for
the CRF's unary (AV-Digits AVSS val: 0.2 / 0.25 / 0.3 tie at ~23 before the CRF and give 47.9 / 44.2 / 37.0 after
it). Their soft scores are the softmax over [b0, class maps] (`cam.scores_to_probs`, temperature 1), so the scores
at another threshold b are exact: scale the background probability by exp(b - b0) and renormalise
(`with_background`). Every (kernel, threshold) pair in `candidates` x `bg_thresholds` (plus b0 itself) is scored on
val; ties go to the earlier kernel and then to the threshold nearest b0.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pcas_cli.artifacts import ArtifactReader, ArtifactWriter, read_features, read_predictions
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.crf import CRFParams, crf_many, get_preset, resolve_workers
from pcas_cli.errors import fail
from pcas_cli.metrics import BinaryMIoU, SemanticScores
from pcas_cli.provenance import check_made_alike, make_provenance
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
    bg_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # with choose_on_val, for pseudo-label's
    # thresholded predictions: background thresholds tried with every kernel (besides the one they were made with)
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


def made_with_threshold(preds: ArtifactReader) -> float | None:
    """The background threshold b0 that pcas pseudo-label made these predictions with; None for any other
    predictions (a model's, a baseline's one-hot, or an already refined artifact), whose background cannot be moved."""
    if preds.provenance.get("stage") != "pseudo-label" or "bg_threshold" not in preds.meta:
        return None
    return float(preds.meta["bg_threshold"])


def with_background(probs: np.ndarray, factor: float) -> np.ndarray:
    """(K, H, W) probabilities of softmax([b0, maps]) -> those of softmax([b, maps]), factor = exp(b - b0): the
    background channel times the factor, renormalised (absent classes stay exactly 0)."""
    if factor == 1.0:
        return probs
    out = probs.copy()
    out[0] *= factor
    return out / out.sum(axis=0, keepdims=True)


def present_channels(probs: np.ndarray, eps: float) -> list[int]:
    """Class channels (1..K-1) whose maximum probability over the frame exceeds eps."""
    peak = probs[1:].reshape(probs.shape[0] - 1, -1).max(axis=1) if probs.shape[0] > 1 else np.zeros(0)
    return [int(c) + 1 for c in np.flatnonzero(peak > eps)]


def _provenance(cfg: CRFConfig, params: CRFParams | None, inputs: dict[str, str], choice: dict[str, Any] | None
                ) -> dict:
    config = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_RECORDED}
    config["crf_params"] = to_dict(params) if params is not None else None
    prov = make_provenance("crf", config, cfg.seed, inputs)
    if choice is not None:
        prov["crf_choice"] = choice
    return prov


def _frames(feats: ArtifactReader, preds: ArtifactReader, start: int, eps: float, bg_factor: float,
            queue: collections.deque[_Clip]) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """CRF jobs for clips start.. (the same clips in the same order in both files: check_compatible); each clip is
    queued before its first frame is yielded."""
    for i in range(start, len(preds)):
        record = preds.clip(i)
        frames = feats.read("frames", i)  # (T, H, W, 3) uint8
        valid = np.flatnonzero(feats.read("frame_valid", i)).tolist()
        record["scores"] = record["scores"].astype(np.float32)  # (T, K, H, W); written back as float16
        record["masks"] = record["masks"].copy()  # (T, H, W)
        clip = _Clip(record, valid)
        queue.append(clip)
        for t in valid:
            probs = with_background(as_probs(record["scores"][t]), bg_factor)  # (K, H, W)
            yield frames[t], probs, present_channels(probs, eps)


def refined_clips(feats: ArtifactReader, preds: ArtifactReader, start: int, params: CRFParams | None, workers: int,
                  eps: float, bg_factor: float = 1.0) -> Iterator[dict[str, Any]]:
    """The predictions' clip records from `start` on, in order, with the background probability of every valid
    frame scaled by `bg_factor` (`with_background`), then refined by the CRF (params None: no CRF; both at their
    defaults: the records unchanged)."""
    if params is None and bg_factor == 1.0:
        yield from (preds.clip(i) for i in range(start, len(preds)))
        return
    queue: collections.deque[_Clip] = collections.deque()
    jobs = _frames(feats, preds, start, eps, bg_factor, queue)
    if params is None:
        results: Iterator[np.ndarray] = (probs for _, probs, _ in jobs)
    else:
        results = crf_many(jobs, params, workers=workers, chunksize=max(1, int(preds.dims["T"])))
    # Results come back in job order, so each belongs to the oldest clip still waiting for frames; clips with no
    # valid frame are done as soon as they reach the front of the queue.
    for refined in results:
        while queue and queue[0].remaining == 0:
            yield queue.popleft().record
        queue[0].put(refined)
    while queue:
        assert queue[0].remaining == 0, "every queued clip should have received all its frames"
        yield queue.popleft().record


def _open_pair(features: Path, predictions: Path) -> tuple[ArtifactReader, ArtifactReader, str]:
    """Both artifacts, refused (one line naming the predictions) unless they describe the same clips, in the same
    order, with the same frames (the checks of `pcas eval`, which scores the output); and the task."""
    feats, preds = read_features(features), read_predictions(predictions)
    return feats, preds, check_compatible(feats, preds)


@dataclass(frozen=True)
class Choice:
    """What refines the artifact: a kernel (None: no CRF) and, for thresholded predictions, the background
    threshold, with the val comparison that chose them (None when nothing was chosen on val)."""

    kernel: str
    params: CRFParams | None
    bg_threshold: float | None = None  # None: the predictions' background is left as it is
    record: dict[str, Any] | None = None  # stored in the provenance as "crf_choice"


def bg_factor(threshold: float | None, made_with: float | None) -> float:
    """exp(b - b0): how `with_background` moves predictions made with threshold b0 to threshold b (1 when either is
    None: the background is left as it is)."""
    if threshold is None or made_with is None:
        return 1.0
    return float(np.exp(threshold - made_with))


def _val_miou(feats: ArtifactReader, preds: ArtifactReader, semantic: bool,
              params: CRFParams | None, workers: int, eps: float, bg_factor: float,
              advance: Callable[[], Any]) -> float:
    """Val mIoU (the task's official metric; binary tasks on foreground vs background, as `pcas eval`) of the val
    predictions refined with these settings."""
    acc = SemanticScores(int(preds.dims["K"])) if semantic else BinaryMIoU()
    for i, record in enumerate(refined_clips(feats, preds, 0, params, workers, eps, bg_factor)):
        gt = feats.clip(i, ("masks", "mask_valid"))
        pred, truth = record["masks"][gt["mask_valid"]], gt["masks"][gt["mask_valid"]]
        if semantic:
            acc.update(pred, truth)
        else:
            acc.update(pred > 0, truth > 0)
        advance()
    return float(acc.result()["miou"])


def choose_on_val(cfg: CRFConfig, workers: int, made: dict[str, Any]) -> tuple[Choice, dict[str, str]]:
    """The (kernel, background threshold) with the best val mIoU, and the val inputs it read.

    `made` is the provenance of the predictions to refine: the val predictions must have been made alike. The
    threshold is chosen only for pseudo-label's thresholded predictions (`made_with_threshold`); for any other
    predictions only the kernel is.
    """
    if not cfg.candidates:
        raise fail(None, "crf.candidates is empty; list kernels to choose from, e.g. [\"none\", \"toco_cam\"]")
    kernels = {c: parse_kernel(c) for c in cfg.candidates}
    val_feats, val_preds = Path(cfg.features).with_name("val.h5"), Path(cfg.predictions).with_name("val.h5")
    for path in (val_feats, val_preds):
        if not path.exists():
            raise fail(path, "not found: choose_on_val needs the val split's features and predictions next to "
                             "the ones refined (or pass --set choose_on_val=false)")
    feats, preds, task = _open_pair(val_feats, val_preds)
    check_made_alike(cfg.predictions, val_preds, made, preds.provenance)
    semantic = task == "semantic"
    b0 = made_with_threshold(preds)
    # thresholds to try: the one the predictions were made with first (ties keep it), then the others, nearest first
    thresholds: list[float | None] = [None] if b0 is None else \
        sorted({b0, *(float(b) for b in cfg.bg_thresholds)}, key=lambda b: (abs(b - b0), b))
    grid = [(k, b) for k in cfg.candidates for b in thresholds]
    miou: dict[tuple[str, float | None], float] = {}
    with feats, preds, progress(transient=True) as bar:
        job = bar.add_task("crf: choosing on val", total=len(grid) * len(preds), info="")
        for name, b in grid:
            miou[(name, b)] = _val_miou(feats, preds, semantic, kernels[name], workers, cfg.present_eps,
                                        bg_factor(b, b0), lambda: bar.advance(job))
        inputs = {str(val_feats): feats.artifact_id, str(val_preds): preds.artifact_id}
    kernel, bg = max(grid, key=lambda kb: miou[kb])  # ties: the earlier kernel ("none" first), then the nearer b
    best = {k: max(((miou[(k, b)], b) for b in thresholds), key=lambda mb: mb[0]) for k in cfg.candidates}
    record: dict[str, Any] = {"chosen": kernel, "val_miou": {k: m for k, (m, _) in best.items()}}
    if b0 is not None:
        record.update(bg_threshold=bg, made_with_bg_threshold=b0,
                      best_bg_threshold={k: b for k, (_, b) in best.items()},
                      val_miou_grid={k: {f"{b:g}": miou[(k, b)] for b in thresholds} for k in cfg.candidates})
    CONSOLE.print(crf_choice_line(record))
    return Choice(kernel, kernels[kernel], bg, record), inputs


def crf_choice_line(choice: dict[str, Any]) -> str:
    """One sentence on what `choose_on_val` chose (its provenance record "crf_choice"): the kernel and, for
    pseudo-labels, the background threshold (with the one pseudo-label had chosen before the CRF)."""
    best_bg = choice.get("best_bg_threshold")
    at = (lambda k: f" @{best_bg[k]:g}") if best_bg else (lambda k: "")
    tried = ", ".join(f"{k} {100 * v:.2f}{at(k)}" for k, v in choice["val_miou"].items())
    if "bg_threshold" not in choice:
        return f"CRF kernel chosen on val: {choice['chosen']} (val mIoU x100: {tried})."
    return (f"CRF kernel and background threshold chosen on val, jointly: {choice['chosen']} with background "
            f"{choice['bg_threshold']:g} (pseudo-label's own, chosen before the CRF: "
            f"{choice['made_with_bg_threshold']:g}; val mIoU x100 at each kernel's best threshold: {tried}).")


def run(cfg: CRFConfig) -> Path:
    """Refine `cfg.predictions` with the frames of `cfg.features`; write `cfg.out`."""
    seed_everything(cfg.seed)
    workers = resolve_workers(cfg.workers)
    feats, preds, _ = _open_pair(cfg.features, cfg.predictions)
    inputs = {str(cfg.features): feats.artifact_id, str(cfg.predictions): preds.artifact_id}
    if cfg.choose_on_val:
        choice, val_inputs = choose_on_val(cfg, workers, preds.provenance)
        inputs.update(val_inputs)
    else:
        choice = Choice(cfg.preset, fixed_kernel(cfg))
    made_with = made_with_threshold(preds)
    meta = dict(preds.meta)
    if choice.bg_threshold is not None:
        meta["crf_bg_threshold"] = choice.bg_threshold  # meta["bg_threshold"] stays the one the masks were made with
    prov = _provenance(cfg, choice.params, inputs, choice.record)
    with (ArtifactWriter(cfg.out, "predictions", preds.dims, meta, prov, resume=cfg.resume) as writer,
          progress() as bar):
        if writer.start:
            CONSOLE.print(f"resuming {cfg.out}: {writer.start} of {len(preds)} clips already refined")
        task = bar.add_task(f"crf {choice.kernel}", total=len(preds), completed=writer.start, info=f"{workers} proc")
        for record in refined_clips(feats, preds, writer.start, choice.params, workers, cfg.present_eps,
                                    bg_factor(choice.bg_threshold, made_with)):
            writer.append(**record)
            bar.advance(task)
    feats.close()
    preds.close()
    CONSOLE.print(f"[green]wrote[/green] {cfg.out}")
    return cfg.out
