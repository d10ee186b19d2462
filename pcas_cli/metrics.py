"""The official AVSBench metrics, re-implemented in vectorised numpy with streaming accumulators.

Definitions follow the official code (OpenNLPLab/AVSBench `avs_s4|avs_ms3/utils/utility.py` and
`avss/utils/compute_color_metrics.py`), quirks included; see docs/reference/avsbench-facts.md section 2.

Binary tasks (S4, MS3):
- mIoU (`mask_iou`): per frame, IoU = |P & G| / (|P | G| + 1e-7); a frame with an empty ground truth scores the
  fraction of correctly predicted background pixels instead, TN / (H*W + 1e-7). Frame IoUs are averaged within a test
  batch, and batch means are averaged ("official" protocol). With full batches this equals the per-frame mean, which
  is reported too.
- F-score (`Eval_Fmeasure`): beta^2 = 0.3, 255 thresholds; per frame a precision/recall curve gives an F curve. Frames
  with an empty ground truth are skipped; the F curves of the remaining frames *of one test batch* are averaged and the
  batch scores the maximum over thresholds (a batch with no non-empty frame scores 0 and still counts); batch scores
  are averaged. The result depends on the batch size (official test: 4 videos x 5 frames = 20 frames). The
  batch-independent variant (ACL-SSL's fix) averages the curves over the whole set, then takes the maximum.

Semantic task (AVSS, `_batch_miou_fscore`): from argmax class maps, per frame and class c: I, U = |pred=c| + |gt=c| - I,
IoU = I / (U + eps), F = 1.3 P R / (0.3 P + R) with NaN -> 0; sums over all frames are divided by the number of frames
where U > 0; the reported value is the mean over *all* classes, background included, so a class that never occurs
anywhere counts as 0. The result does not depend on the batch size.

Which frames are scored (the official AVSS test also scores the all-background padded frames of 5 s clips) is the
caller's choice; see `pcas_cli.stages.evaluate`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

IOU_EPS = 1e-7  # `mask_iou` eps
F_BETA2 = 0.3  # beta^2 of every official F-score
F_NUM_THRESHOLDS = 255  # `Eval_Fmeasure` pr_num
F_BATCH_FRAMES = 20  # official S4/MS3 test batch: 4 videos x 5 frames
SEMANTIC_EPS = float(np.spacing(1))  # 2.22e-16, `np.spacing(1)` in `_batch_miou_fscore`


def official_thresholds(num: int = F_NUM_THRESHOLDS) -> np.ndarray:
    """`torch.linspace(0, 1 - 1e-10, num)` as the official code builds it: float32, so the last threshold is 1.0.

    Compared with float32 probabilities, a pixel of probability 1.0 is still foreground at the last threshold.
    """
    return np.linspace(0.0, 1.0 - 1e-10, num, dtype=np.float64).astype(np.float32)  # (num,)


def _as_binary(x: np.ndarray, name: str) -> np.ndarray:
    """Hard {0,1} maps as bool. Probabilities must be thresholded by the caller (`binarize`), never silently."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        raise ValueError(f"{name}: expected a hard 0/1 map, got floats; threshold probabilities with binarize()")
    return x != 0


def binarize(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The official hard prediction: foreground where sigmoid(logit) = prob > 0.5 (strictly greater)."""
    return np.asarray(prob) > threshold


def _check_frames(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected matching (N, H, W) arrays, got {a.shape} and {b.shape}")


# ----------------------------------------------------------------------------------------------------------------------
# Per-frame quantities (pure functions)
# ----------------------------------------------------------------------------------------------------------------------

def binary_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU of official `mask_iou`.

    Args:
        pred: (N, H, W) hard prediction, nonzero = foreground.
        gt: (N, H, W) ground truth, nonzero = foreground.

    Returns:
        (N,) float64: |P & G| / (|P | G| + 1e-7), or TN / (H*W + 1e-7) where the ground truth is empty.
    """
    p = _as_binary(pred, "pred")
    g = _as_binary(gt, "gt")
    _check_frames(p, g)
    n, h, w = p.shape
    p, g = p.reshape(n, h * w), g.reshape(n, h * w)  # (N, HW)
    inter = (p & g).sum(1)
    union = (p | g).sum(1)
    empty = ~g.any(1)
    tn = (~p & ~g).sum(1)
    num = np.where(empty, tn, inter).astype(np.float64)
    den = np.where(empty, h * w, union).astype(np.float64)
    return num / (den + IOU_EPS)


def fscore_curves(prob: np.ndarray, gt: np.ndarray, num_thresholds: int = F_NUM_THRESHOLDS,
                  beta2: float = F_BETA2) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame F curves of official `Eval_Fmeasure`/`_eval_pr`.

    At threshold t_i, P_i = prob >= t_i; prec = TP / (|P_i| + 1e-20), rec = TP / (|G| + 1e-20),
    F = (1 + beta2) prec rec / (beta2 prec + rec), NaN -> 0.

    Args:
        prob: (N, H, W) foreground probabilities (compared in float32, as the official code does).
        gt: (N, H, W) ground truth, nonzero = foreground.

    Returns:
        curves (N, num_thresholds) float64 and nonempty (N,) bool; frames with an empty ground truth have a curve of
        zeros and are flagged False (the official code skips them).
    """
    g = _as_binary(gt, "gt")
    p = np.asarray(prob, dtype=np.float32)
    _check_frames(p, g)
    n = p.shape[0]
    if n == 0:
        return np.zeros((0, num_thresholds)), np.zeros(0, dtype=bool)
    thr = official_thresholds(num_thresholds)  # (K,)
    p, g = p.reshape(n, -1), g.reshape(n, -1)  # (N, HW)
    # level[j] = number of thresholds <= p_j, so pixel j is in P_i exactly when i < level[j]. Counting pixels per level
    # with one bincount avoids materialising the (N, K, HW) comparison.
    level = np.searchsorted(thr, p, side="right")  # (N, HW) in 0..K
    offset = (np.arange(n) * (num_thresholds + 1))[:, None]
    size = n * (num_thresholds + 1)
    hist_all = np.bincount((level + offset).ravel(), minlength=size).reshape(n, -1)  # (N, K+1)
    hist_fg = np.bincount((level + offset)[g], minlength=size).reshape(n, -1)  # (N, K+1), ground-truth pixels only
    # |P_i| = pixels with level > i: reverse cumulative sums, dropping level 0.
    n_pos = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)  # (N, K)
    tp = np.cumsum(hist_fg[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)  # (N, K)
    n_gt = g.sum(1, keepdims=True).astype(np.float64)  # (N, 1)
    prec = tp / (n_pos + 1e-20)
    rec = tp / (n_gt + 1e-20)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    f = np.nan_to_num(f, nan=0.0)
    nonempty = n_gt[:, 0] > 0
    f[~nonempty] = 0.0
    return f, nonempty


def semantic_frame_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """Per-frame, per-class pixel counts |pred=c & gt=c|, |pred=c|, |gt=c| (the `histc` calls of the official code).

    Args:
        pred: (N, H, W) class-index prediction (argmax), 0 = background.
        gt: (N, H, W) class-index ground truth.
        num_classes: number of classes including background.

    Returns:
        inter, area_pred, area_gt, each (N, num_classes) int64.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_frames(pred, gt)
    for name, x in (("pred", pred), ("gt", gt)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name}: class index outside 0..{num_classes - 1}")
    n, h, w = pred.shape
    offset = (np.arange(n, dtype=np.int64) * num_classes)[:, None]
    p = pred.reshape(n, h * w).astype(np.int64) + offset  # (N, HW) flat (frame, class) index
    g = gt.reshape(n, h * w).astype(np.int64) + offset
    size = n * num_classes
    area_pred = np.bincount(p.ravel(), minlength=size).reshape(n, num_classes)
    area_gt = np.bincount(g.ravel(), minlength=size).reshape(n, num_classes)
    inter = np.bincount(p[p == g], minlength=size).reshape(n, num_classes)
    return inter, area_pred, area_gt


# ----------------------------------------------------------------------------------------------------------------------
# Streaming accumulators: frames arrive in order; official test batches are formed internally
# ----------------------------------------------------------------------------------------------------------------------

def _batch_slices(n: int, filled: int, batch: int) -> Iterator[tuple[slice, bool]]:
    """Cut n incoming frames where test batches close; `filled` frames of the open batch came earlier.

    Yields (slice into the incoming frames, whether the batch closes after it).
    """
    i = 0
    while i < n:
        take = min(n - i, batch - filled)
        yield slice(i, i + take), filled + take == batch
        i += take
        filled = 0


class BinaryMIoU:
    """Streaming official binary mIoU: mean over test batches of the mean frame IoU, plus the per-frame mean.

    The last, possibly partial, batch counts as a batch of its own (a DataLoader without drop_last).
    """

    def __init__(self, batch_frames: int = F_BATCH_FRAMES) -> None:
        if batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        self.batch_frames = batch_frames
        self._batch_sum = 0.0  # sum of frame IoUs in the open batch
        self._batch_n = 0  # frames in the open batch
        self._batches_sum = 0.0  # sum of closed batch means
        self._batches_n = 0
        self._frames_sum = 0.0
        self._frames_n = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add (N, H, W) hard predictions and ground truths, in test order; returns the frames' IoUs (N,)."""
        iou = binary_iou(pred, gt)  # (N,)
        if len(iou) == 0:
            return iou
        self._frames_sum += float(iou.sum())
        self._frames_n += len(iou)
        for sl, closes in _batch_slices(len(iou), self._batch_n, self.batch_frames):
            self._batch_sum += float(iou[sl].sum())
            self._batch_n += sl.stop - sl.start
            if closes:
                self._close_batch()
        return iou

    def _close_batch(self) -> None:
        self._batches_sum += self._batch_sum / self._batch_n
        self._batches_n += 1
        self._batch_sum, self._batch_n = 0.0, 0

    @property
    def frames(self) -> int:
        return self._frames_n

    def result(self) -> dict[str, float]:
        """{"miou": official batch protocol, "miou_per_frame": mean over frames, "batches": count}; 0 when empty."""
        batches_sum, batches_n = self._batches_sum, self._batches_n
        if self._batch_n:  # the open, partial batch, without closing it (result() may be called mid-stream)
            batches_sum += self._batch_sum / self._batch_n
            batches_n += 1
        return {
            "miou": batches_sum / batches_n if batches_n else 0.0,
            "miou_per_frame": self._frames_sum / self._frames_n if self._frames_n else 0.0,
            "batches": batches_n,
        }


class BinaryFScore:
    """Streaming official binary F-score (max per test batch, averaged over batches) and the batch-independent one."""

    def __init__(self, batch_frames: int = F_BATCH_FRAMES, num_thresholds: int = F_NUM_THRESHOLDS,
                 beta2: float = F_BETA2) -> None:
        if batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        self.batch_frames = batch_frames
        self.num_thresholds = num_thresholds
        self.beta2 = beta2
        self._batch_curve = np.zeros(num_thresholds)  # sum of the open batch's non-empty-frame curves
        self._batch_nonempty = 0
        self._batch_n = 0
        self._batches_sum = 0.0
        self._batches_n = 0
        self._all_curve = np.zeros(num_thresholds)  # over the whole set, for the batch-independent variant
        self._all_nonempty = 0
        self._frames_n = 0

    def update(self, prob: np.ndarray, gt: np.ndarray) -> None:
        """Add (N, H, W) foreground probabilities and ground truths, in test order."""
        if np.asarray(gt).shape[0] == 0:
            return
        curves, nonempty = fscore_curves(prob, gt, self.num_thresholds, self.beta2)  # (N, K), (N,)
        self._all_curve += curves.sum(0)
        self._all_nonempty += int(nonempty.sum())
        self._frames_n += len(nonempty)
        for sl, closes in _batch_slices(len(nonempty), self._batch_n, self.batch_frames):
            self._batch_curve += curves[sl].sum(0)  # empty-GT curves are zeros, so summing all frames is safe
            self._batch_nonempty += int(nonempty[sl].sum())
            self._batch_n += sl.stop - sl.start
            if closes:
                self._close_batch()

    def _batch_value(self) -> float:
        # Official: mean curve over the batch's non-empty frames, then max; no non-empty frame -> 0 (still a batch).
        return float((self._batch_curve / self._batch_nonempty).max()) if self._batch_nonempty else 0.0

    def _close_batch(self) -> None:
        self._batches_sum += self._batch_value()
        self._batches_n += 1
        self._batch_curve[:] = 0.0
        self._batch_nonempty = 0
        self._batch_n = 0

    @property
    def frames(self) -> int:
        return self._frames_n

    def result(self) -> dict[str, float]:
        """{"fscore": official per-batch max, "fscore_batch_independent": max of the whole-set mean curve,
        "batches", "nonempty_frames"}; 0 when nothing was added."""
        batches_sum, batches_n = self._batches_sum, self._batches_n
        if self._batch_n:
            batches_sum += self._batch_value()
            batches_n += 1
        whole = float((self._all_curve / self._all_nonempty).max()) if self._all_nonempty else 0.0
        return {
            "fscore": batches_sum / batches_n if batches_n else 0.0,
            "fscore_batch_independent": whole,
            "batches": batches_n,
            "nonempty_frames": self._all_nonempty,
        }


class SemanticScores:
    """Streaming official AVSS mIoU and F-score over class-index maps (independent of how frames are batched)."""

    def __init__(self, num_classes: int, beta2: float = F_BETA2) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1 (background included)")
        self.num_classes = num_classes
        self.beta2 = beta2
        self.iou_sum = np.zeros(num_classes)  # sum over frames of per-class IoU
        self.f_sum = np.zeros(num_classes)  # sum over frames of per-class F
        self.count = np.zeros(num_classes, dtype=np.int64)  # frames where class c is predicted or in the GT (U > 0)
        self.gt_frames = np.zeros(num_classes, dtype=np.int64)  # frames where class c is in the GT
        self._frames_n = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add (N, H, W) argmax predictions and ground truths; returns what they added to the per-class IoU sums and
        frame counts, (C,) each (per-clip sums for the bootstrap, `bootstrap_miou`)."""
        if np.asarray(gt).shape[0] == 0:
            return np.zeros(self.num_classes), np.zeros(self.num_classes, dtype=np.int64)
        inter, area_pred, area_gt = (a.astype(np.float64) for a in semantic_frame_counts(pred, gt, self.num_classes))
        union = area_pred + area_gt - inter  # (N, C)
        iou_sum, count = (inter / (union + SEMANTIC_EPS)).sum(0), (union > 0).sum(0)
        self.iou_sum += iou_sum
        self.count += count
        self.gt_frames += (area_gt > 0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = inter / area_pred
            rec = inter / area_gt
            f = (1 + self.beta2) * prec * rec / (self.beta2 * prec + rec)
        self.f_sum += np.nan_to_num(f, nan=0.0).sum(0)
        self._frames_n += inter.shape[0]
        return iou_sum, count

    @property
    def frames(self) -> int:
        return self._frames_n

    def result(self) -> dict[str, Any]:
        """Official scores and extras.

        Returns:
            miou, fscore: official means over all classes, background included (classes with count 0 score 0);
            miou_present, fscore_present: extra, NOT the official protocol: means over the classes present in the
            ground truth of at least one scored frame (0 when there is none);
            per_class_iou, per_class_fscore: (C,) arrays; count: (C,) frames with U > 0; gt_frames: (C,).
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            iou_pc = np.nan_to_num(self.iou_sum / self.count, nan=0.0)
            f_pc = np.nan_to_num(self.f_sum / self.count, nan=0.0)
        present = self.gt_frames > 0
        return {
            "miou": float(iou_pc.mean()),
            "fscore": float(f_pc.mean()),
            "miou_present": float(iou_pc[present].mean()) if present.any() else 0.0,
            "fscore_present": float(f_pc[present].mean()) if present.any() else 0.0,
            "per_class_iou": iou_pc,
            "per_class_fscore": f_pc,
            "count": self.count.copy(),
            "gt_frames": self.gt_frames.copy(),
        }


# ----------------------------------------------------------------------------------------------------------------------
# Uncertainty: how much an mIoU would move with another draw of the test clips (not part of the official protocol)
# ----------------------------------------------------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 1000


def bootstrap_miou(iou_sum: np.ndarray, count: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> np.ndarray:
    """mIoU of `resamples` bootstrap resamples of the clips (drawn with replacement), (resamples,).

    iou_sum, count: (N, C) per clip: the summed frame IoUs and the frames that count for each class (AVSS: union > 0,
    as SemanticScores; binary: C = 1, every scored frame). Each resample reduces as the official AVSS metric does:
    per class summed IoU / frames, 0 where a class has none, mean over all C classes (binary: the per-frame mean).
    Clips, not frames, are resampled because a clip's frames are not independent draws. Two metrics files over the
    same clips in the same order drawn with the same seed get the same resamples: their difference is a paired
    bootstrap."""
    iou_sum, count = np.asarray(iou_sum, dtype=np.float64), np.asarray(count, dtype=np.float64)
    n = iou_sum.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)  # (R, N): how often each clip was drawn
    sums, frames = weights @ iou_sum, weights @ count  # (R, C)
    per_class = np.divide(sums, frames, out=np.zeros_like(sums), where=frames > 0)
    return per_class.mean(axis=1)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap samples (percentile method)."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
