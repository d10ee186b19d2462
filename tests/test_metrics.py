"""Official AVSBench metrics on tiny hand-computed arrays (pcas_cli.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcas_cli.metrics import (BinaryFScore, BinaryMIoU, SemanticScores, binarize, binary_iou, fscore_curves,
                              official_thresholds, semantic_frame_counts)

F_13_23 = 0.65 / 1.15  # F with precision 1/2 and recall 1 (beta^2 = 0.3) = 13/23


def frames(*rows: list) -> np.ndarray:
    return np.array(rows)


# ---------------------------------------------------------------------------------------------------------------- mIoU

def test_binary_iou_hand_computed():
    pred = frames([[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]])
    gt = frames([[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [0, 1]])
    iou = binary_iou(pred, gt)
    # inter 1 / union 2; empty GT: 3 of 4 pixels correctly background; empty GT, empty pred: 4/4; missed object: 0.
    assert iou == pytest.approx([0.5, 0.75, 1.0, 0.0], abs=1e-6)
    assert iou[0] == 1 / (2 + 1e-7)


def test_binary_iou_refuses_probabilities():
    with pytest.raises(ValueError, match="binarize"):
        binary_iou(np.full((1, 2, 2), 0.7), np.ones((1, 2, 2), np.uint8))
    assert binarize(np.array([0.5, 0.50001, 0.9])).tolist() == [False, True, True]  # strictly > 0.5


def test_binary_miou_batch_protocol_and_chunking():
    # Frame IoUs 1, 0, 0: batches of 2 are [1, 0] -> 0.5 and the partial [0] -> 0, so the official value is 0.25,
    # while the per-frame mean is 1/3.
    gt = frames([[1, 0]], [[1, 0]], [[1, 0]])
    pred = frames([[1, 0]], [[0, 1]], [[0, 1]])
    whole = BinaryMIoU(batch_frames=2)
    whole.update(pred, gt)
    chunked = BinaryMIoU(batch_frames=2)
    chunked.update(pred[:1], gt[:1])
    chunked.update(pred[1:], gt[1:])
    for acc in (whole, chunked):
        r = acc.result()
        assert r["miou"] == pytest.approx(0.25, abs=1e-6)
        assert r["miou_per_frame"] == pytest.approx(1 / 3, abs=1e-6)
        assert r["batches"] == 2
    full = BinaryMIoU(batch_frames=1)
    full.update(pred, gt)
    assert full.result()["miou"] == pytest.approx(1 / 3, abs=1e-6)


def test_binary_miou_empty_is_zero():
    acc = BinaryMIoU()
    acc.update(np.zeros((0, 2, 2), np.uint8), np.zeros((0, 2, 2), np.uint8))
    assert acc.result() == {"miou": 0.0, "miou_per_frame": 0.0, "batches": 0}


# ------------------------------------------------------------------------------------------------------------- F-score

def test_thresholds_are_the_official_float32_linspace():
    thr = official_thresholds()
    assert thr.dtype == np.float32 and thr.shape == (255,)
    assert thr[0] == 0.0 and thr[-1] == 1.0  # 1 - 1e-10 rounds to 1.0 in float32
    assert thr[127] == 0.5
    torch = pytest.importorskip("torch")
    ref = torch.linspace(0, 1 - 1e-10, 255).numpy()
    assert np.abs(thr.view(np.int32) - ref.view(np.int32)).max() <= 1  # at most one float32 ulp apart


def test_fscore_curve_hand_computed_2x2():
    prob = np.array([[[0.9, 0.6], [0.3, 0.1]]])
    gt = np.array([[[1, 0], [1, 0]]])
    curves, nonempty = fscore_curves(prob, gt)
    assert nonempty.tolist() == [True]
    f = curves[0]
    # t = 0 and t = 20/254 = 0.079: all four pixels positive, TP 2: prec 1/2, rec 1 -> 13/23.
    assert f[0] == pytest.approx(F_13_23) and f[20] == pytest.approx(F_13_23)
    # t = 26/254 = 0.102: {0.9, 0.6, 0.3}, TP 2: prec 2/3, rec 1 -> 1.3 * 2/3 / (0.2 + 1) = 13/18.
    assert f[26] == pytest.approx(13 / 18)
    # t = 100/254 = 0.394: {0.9, 0.6}, TP 1: prec 1/2, rec 1/2 -> 1/2.
    assert f[100] == pytest.approx(0.5)
    # t = 200/254 = 0.787: {0.9}, TP 1: prec 1, rec 1/2 -> 0.65 / 0.8.
    assert f[200] == pytest.approx(0.8125)
    # t = 1.0: nothing positive: 0/0 -> NaN -> 0.
    assert f[254] == 0.0
    assert f.max() == pytest.approx(0.8125)
    acc = BinaryFScore()
    acc.update(prob, gt)
    assert acc.result()["fscore"] == pytest.approx(0.8125)


def test_fscore_last_threshold_keeps_probability_one():
    # With float32 thresholds the last one is exactly 1.0, and p >= 1.0 still counts (an official quirk).
    curves, _ = fscore_curves(np.array([[[1.0, 0.0]]]), np.array([[[1, 0]]]))
    assert curves[0, 254] == pytest.approx(1.0)


def _reference_curves(prob: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """A deliberately naive loop over frames and thresholds (the official algorithm, written independently)."""
    thr = official_thresholds()
    out = np.zeros((len(prob), len(thr)))
    for n in range(len(prob)):
        g = gt[n].astype(np.float64)
        for i, t in enumerate(thr):
            p = (prob[n].astype(np.float32) >= t).astype(np.float64)
            tp = (p * g).sum()
            prec, rec = tp / (p.sum() + 1e-20), tp / (g.sum() + 1e-20)
            with np.errstate(invalid="ignore"):
                f = 1.3 * prec * rec / (0.3 * prec + rec)
            out[n, i] = 0.0 if np.isnan(f) else f
    return out


def test_fscore_curves_match_naive_loop():
    rng = np.random.default_rng(0)
    prob = rng.random((3, 6, 5)).astype(np.float16)
    prob[0, 0, 0] = 1.0
    gt = rng.random((3, 6, 5)) > 0.6
    curves, nonempty = fscore_curves(prob, gt)
    assert nonempty.all()
    np.testing.assert_allclose(curves, _reference_curves(prob, gt), rtol=1e-12, atol=1e-12)


# Two 1x2 frames whose F curves peak at different thresholds:
# A: prob [0.8, 0.2], gt [1, 0]: F = 13/23 for t <= 0.2, 1 for 0.2 < t <= 0.8, 0 above.
# B: prob [0.8, 0.2], gt [0, 1]: F = 13/23 for t <= 0.2, 0 above.
PROB_AB = np.array([[[0.8, 0.2]], [[0.8, 0.2]]])
GT_AB = np.array([[[1, 0]], [[0, 1]]])


def test_official_fscore_depends_on_batch_size():
    per_frame = BinaryFScore(batch_frames=1)
    per_frame.update(PROB_AB, GT_AB)
    r1 = per_frame.result()
    assert r1["fscore"] == pytest.approx((1 + F_13_23) / 2)  # max 1 and max 13/23, averaged = 18/23
    assert r1["batches"] == 2
    together = BinaryFScore(batch_frames=2)
    together.update(PROB_AB, GT_AB)
    r2 = together.result()
    # Mean curve: 13/23 for t <= 0.2, 1/2 for 0.2 < t <= 0.8 -> max 13/23.
    assert r2["fscore"] == pytest.approx(F_13_23)
    assert r2["batches"] == 1
    # The batch-independent variant is the whole-set curve's max whatever the batch size.
    assert r1["fscore_batch_independent"] == pytest.approx(F_13_23)
    assert r2["fscore_batch_independent"] == pytest.approx(F_13_23)


def test_fscore_partial_last_batch_and_chunked_updates():
    prob = np.concatenate([PROB_AB, PROB_AB[:1]])  # A, B, A
    gt = np.concatenate([GT_AB, GT_AB[:1]])
    whole = BinaryFScore(batch_frames=2)
    whole.update(prob, gt)
    chunked = BinaryFScore(batch_frames=2)
    for i in range(3):
        chunked.update(prob[i:i + 1], gt[i:i + 1])
    for acc in (whole, chunked):
        r = acc.result()
        assert r["batches"] == 2  # [A, B] -> 13/23 and the partial [A] -> 1
        assert r["fscore"] == pytest.approx((F_13_23 + 1) / 2)


def test_fscore_empty_gt_frames_skipped_but_all_empty_batch_counts_zero():
    empty_gt = np.zeros((1, 1, 2), np.uint8)
    prob = np.concatenate([PROB_AB[:1], PROB_AB[:1]])  # A, then a frame with an empty ground truth
    gt = np.concatenate([GT_AB[:1], empty_gt])
    acc = BinaryFScore(batch_frames=1)
    acc.update(prob, gt)
    r = acc.result()
    assert r["fscore"] == pytest.approx(0.5)  # batches [A] -> 1 and [empty] -> 0
    assert r["nonempty_frames"] == 1
    assert r["fscore_batch_independent"] == pytest.approx(1.0)
    acc2 = BinaryFScore(batch_frames=2)
    acc2.update(prob, gt)
    assert acc2.result()["fscore"] == pytest.approx(1.0)  # the empty frame is skipped inside its batch
    only_empty = BinaryFScore(batch_frames=2)
    only_empty.update(prob[1:], empty_gt)
    assert only_empty.result()["fscore"] == 0.0 and only_empty.result()["batches"] == 1


# ------------------------------------------------------------------------------------------------------------ semantic

# 4 classes (0 = background, 3 never occurs). Frame 1: gt [[0,1],[1,1]], pred [[0,1],[0,1]].
# Frame 2: gt all background, pred [[2,0],[0,0]] (a false positive of class 2, which is never in the GT).
SEM_GT = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
SEM_PRED = np.array([[[0, 1], [0, 1]], [[2, 0], [0, 0]]])


def test_semantic_frame_counts():
    inter, area_pred, area_gt = semantic_frame_counts(SEM_PRED, SEM_GT, 4)
    assert inter.tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]]
    assert area_pred.tolist() == [[2, 2, 0, 0], [3, 0, 1, 0]]
    assert area_gt.tolist() == [[1, 3, 0, 0], [4, 0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        semantic_frame_counts(SEM_PRED, SEM_GT, 2)


def test_semantic_scores_hand_computed():
    acc = SemanticScores(4)
    acc.update(SEM_PRED, SEM_GT)
    r = acc.result()
    # count = frames with U > 0: background twice, class 1 once, class 2 once (false positive only), class 3 never.
    assert r["count"].tolist() == [2, 1, 1, 0]
    assert r["gt_frames"].tolist() == [2, 1, 0, 0]
    # Background: frame 1 I=1, U=2 -> 1/2; frame 2 I=3, U=4 -> 3/4. Class 1: I=2, U=3 -> 2/3.
    iou = [(0.5 + 0.75) / 2, 2 / 3, 0.0, 0.0]
    np.testing.assert_allclose(r["per_class_iou"], iou, atol=1e-12)
    # F: background frame 1 P=1/2, R=1 -> 13/23; frame 2 P=1, R=3/4 -> 13/14. Class 1 P=1, R=2/3 -> 26/29.
    # Class 2: P = 0, R = 0/0 -> NaN -> 0.
    f = [(F_13_23 + 13 / 14) / 2, 26 / 29, 0.0, 0.0]
    np.testing.assert_allclose(r["per_class_fscore"], f, atol=1e-12)
    assert r["miou"] == pytest.approx(sum(iou) / 4)  # never-present class 3 counts as 0 in the mean
    assert r["fscore"] == pytest.approx(sum(f) / 4)
    assert r["miou_present"] == pytest.approx((iou[0] + iou[1]) / 2)  # classes 0 and 1 occur in the GT
    assert r["fscore_present"] == pytest.approx((f[0] + f[1]) / 2)


def test_semantic_scores_do_not_depend_on_batching():
    one = SemanticScores(4)
    one.update(SEM_PRED, SEM_GT)
    two = SemanticScores(4)
    two.update(SEM_PRED[1:], SEM_GT[1:])
    two.update(SEM_PRED[:1], SEM_GT[:1])
    assert one.result()["miou"] == two.result()["miou"]
    assert one.result()["fscore"] == two.result()["fscore"]


def test_semantic_padded_frame_changes_scores():
    # A padded frame (all-background GT) predicted all background adds a perfect background frame.
    acc = SemanticScores(4)
    acc.update(SEM_PRED, SEM_GT)
    acc.update(np.zeros((1, 2, 2), np.int64), np.zeros((1, 2, 2), np.int64))
    r = acc.result()
    assert r["count"].tolist() == [3, 1, 1, 0]
    assert r["per_class_iou"][0] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert r["miou"] == pytest.approx((0.75 + 2 / 3) / 4)


def test_semantic_empty_result_is_zero():
    r = SemanticScores(3).result()
    assert r["miou"] == 0.0 and r["fscore"] == 0.0 and r["miou_present"] == 0.0


# -------------------------------------------------------------------------- frame-level audio classification (Table 3)

def test_average_precision_and_map_hand_computed():
    from pcas_cli.metrics_cls import average_precision, mean_average_precision

    # ranked order: hit, miss, hit -> precisions at the hits 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.9, 0.1]), np.array([0, 0])))
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.4], [0.7, 0.1, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: hits at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: hit at rank 1 -> 1; class 2 has no positive: left out
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_set_accuracy_by_sources_hand_computed():
    from pcas_cli.metrics_cls import exact_set_accuracy, set_accuracy_by_sources

    probs = np.array([[0.1, 0.2, 0.3],   # silent, nothing heard: right
                      [0.6, 0.1, 0.1],   # silent, class 0 heard: wrong
                      [0.9, 0.4, 0.1],   # one source (0): exact, ranked first
                      [0.4, 0.3, 0.1],   # one source (0): nothing heard, but ranked first
                      [0.2, 0.3, 0.1],   # one source (0): class 1 ranked first
                      [0.7, 0.6, 0.2],   # overlap (0, 1): exact, ranked first
                      [0.8, 0.3, 0.4]])  # overlap (0, 1): only 0 heard; 2 outranks 1
    targets = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    got = set_accuracy_by_sources(probs, targets)
    assert got == {"silent": {"seconds": 2, "exact": 0.5, "top_n": None},
                   "one": {"seconds": 3, "exact": pytest.approx(1 / 3), "top_n": pytest.approx(2 / 3)},
                   "overlap": {"seconds": 2, "exact": 0.5, "top_n": 0.5}}
    assert exact_set_accuracy(probs, targets) == pytest.approx(3 / 7)  # the groups' exact sets, pooled
    none_overlapped = set_accuracy_by_sources(probs[:5], targets[:5])["overlap"]
    assert none_overlapped == {"seconds": 0, "exact": None, "top_n": None}


# --------------------------------------------------------------------------------- bootstrap intervals (not official)

def test_bootstrap_miou_hand_computed():
    from pcas_cli.metrics import bootstrap_miou, percentile_interval

    # two clips, classes (background, dog): clip A has a perfect frame of both, clip B a frame with background at
    # IoU 0.5 and no dog. Resamples AA -> 1, BB -> (0.5 + 0) / 2 (dog absent counts 0, as officially), AB or BA ->
    # (1.5 / 2 + 1) / 2
    iou_sum, count = np.array([[1.0, 1.0], [0.5, 0.0]]), np.array([[1, 1], [1, 0]])
    samples = bootstrap_miou(iou_sum, count, resamples=400)
    values, counts = np.unique(samples, return_counts=True)
    assert values == pytest.approx([0.25, 0.875, 1.0])
    assert counts[1] / 400 == pytest.approx(0.5, abs=0.1)  # AB and BA: half the draws
    assert percentile_interval(samples) == (0.25, 1.0)
    # same clips, same seed: the same draws (a paired bootstrap of two rows); identical clips: no spread
    assert np.array_equal(samples, bootstrap_miou(iou_sum, count, resamples=400))
    assert np.all(bootstrap_miou(np.array([[0.3], [0.3]]), np.array([[1], [1]])) == pytest.approx(0.3))


# ---------------------------------------------------------------- against a transcription of the official code


def _official_binary(logits: torch.Tensor, gt: torch.Tensor, batch: int) -> tuple[float, float]:
    """mIoU (`mask_iou`) and F (`Eval_Fmeasure`) as the official S4 / MS3 test loop computes them: per batch of
    `batch` frames, then the unweighted mean over batches (docs/reference/avsbench-facts.md section 2)."""
    ious, fs = [], []
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    for start in range(0, len(gt), batch):
        x, g = logits[start:start + batch], gt[start:start + batch].float()
        p = (torch.sigmoid(x) > 0.5).float()
        frame_iou = []
        for pn, gn in zip(p, g):
            if gn.sum() > 0:
                frame_iou.append((pn * gn).sum() / (torch.maximum(pn, gn).sum() + 1e-7))
            else:
                frame_iou.append(((1 - pn) * (1 - gn)).sum() / (gn.numel() + 1e-7))
        ious.append(torch.stack(frame_iou).mean())
        prob, curve, n = torch.sigmoid(x), torch.zeros(255), 0
        for pn, gn in zip(prob, g):
            if gn.mean() == 0:
                continue
            prec, rec = torch.zeros(255), torch.zeros(255)
            for k, t in enumerate(thresholds):
                y = (pn >= t).float()
                tp = (y * gn).sum()
                prec[k], rec[k] = tp / (y.sum() + 1e-20), tp / (gn.sum() + 1e-20)
            f = 1.3 * prec * rec / (0.3 * prec + rec)
            f[f != f] = 0
            curve, n = curve + f, n + 1
        fs.append((curve / n).max() if n else torch.tensor(0.0))
    return float(torch.stack(ious).mean()), float(torch.stack(fs).mean())


def _official_semantic(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """AVSS `_batch_miou_fscore`: per-frame, per-class IoU / F summed over frames, divided by the frames where the
    class occurs in prediction or truth, NaN -> 0, then the mean over every class, background included."""
    iou_sum, f_sum, count = torch.zeros(num_classes), torch.zeros(num_classes), torch.zeros(num_classes)
    for pf, gf in zip(pred, gt):
        for c in range(num_classes):
            i = float(((pf == c) & (gf == c)).sum())
            np_, ng = float((pf == c).sum()), float((gf == c).sum())
            u = np_ + ng - i
            iou_sum[c] += i / (u + 2.220446049250313e-16)
            count[c] += u > 0
            prec = torch.tensor(i) / np_ if np_ else torch.tensor(float("nan"))
            rec = torch.tensor(i) / ng if ng else torch.tensor(float("nan"))
            f = 1.3 * prec * rec / (0.3 * prec + rec)
            f_sum[c] += 0.0 if torch.isnan(f) else float(f)
    miou, f = iou_sum / count, f_sum / count
    miou[torch.isnan(miou)], f[torch.isnan(f)] = 0, 0
    return float(miou.mean()), float(f.mean())


def test_binary_metrics_match_the_official_code_on_s4_shaped_batches():
    """Random logits and masks in the official test shape (batches of 4 clips x 5 frames, a partial last batch),
    with empty-ground-truth frames and one all-empty batch: pcas's streaming metrics give the official numbers."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(45, 12, 12, generator=g) * 3
    gt = (torch.rand(45, 12, 12, generator=g) > 0.6).to(torch.uint8)
    gt[3] = 0
    gt[20:40] = 0  # the second batch of 20 frames has no foreground at all
    miou_official, f_official = _official_binary(logits, gt, batch=20)
    prob = torch.sigmoid(logits).numpy()
    iou_acc, f_acc = BinaryMIoU(batch_frames=20), BinaryFScore(batch_frames=20)
    for start in range(0, 45, 5):  # streamed clip by clip, as `pcas eval` reads them
        sl = slice(start, start + 5)
        iou_acc.update((prob[sl] > 0.5).astype(np.uint8), gt[sl].numpy())
        f_acc.update(prob[sl], gt[sl].numpy())
    assert iou_acc.result()["miou"] == pytest.approx(miou_official, abs=1e-6)
    assert f_acc.result()["fscore"] == pytest.approx(f_official, abs=1e-6)


def test_semantic_metrics_match_the_official_code():
    """71 classes, most never present, a frame of background only, a class only predicted, a class only true."""
    g = torch.Generator().manual_seed(1)
    gt = torch.randint(0, 4, (12, 10, 10), generator=g)
    pred = torch.randint(0, 5, (12, 10, 10), generator=g)
    gt[2], pred[5], gt[7] = 0, 70, 70
    official = _official_semantic(pred, gt, 71)
    acc = SemanticScores(71)
    for start in range(0, 12, 5):
        acc.update(pred[start:start + 5].numpy().astype(np.uint8), gt[start:start + 5].numpy().astype(np.uint8))
    r = acc.result()
    assert (r["miou"], r["fscore"]) == pytest.approx(official, abs=1e-6)


def test_paired_bootstrap_difference_hand_computed():
    """Whole clips are drawn (the seconds of a clip move together), both listeners are scored on the same draw, and
    the draws are metrics.bootstrap_miou's for the same seed."""
    from pcas_cli.metrics_cls import exact_set_accuracy, paired_bootstrap_difference

    # clip 0: two seconds, a right and b wrong on both; clip 1: one second, both right
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.1]])
    b = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.1]])
    clip = np.array([0, 0, 1])
    diffs = paired_bootstrap_difference(exact_set_accuracy, a, b, targets, clip, resamples=50, seed=3)
    draws = np.random.default_rng(3).integers(0, 2, size=(50, 2))
    # a draw with k copies of clip 0 has 2k seconds where a leads and 2 - k copies of clip 1 where both are right
    k = (draws == 0).sum(axis=1)
    np.testing.assert_allclose(diffs, 2 * k / (2 * k + (2 - k)))
    assert set(np.round(diffs, 6)) == {0.0, round(2 / 3, 6), 1.0}  # all three draws occur in 50: the check can fail
    same = paired_bootstrap_difference(exact_set_accuracy, a, a, targets, clip, resamples=20)
    assert np.all(same == 0.0)
