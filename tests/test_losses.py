"""Losses against hand-computed values on tiny tensors, plus degenerate inputs (no NaN, finite gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pcas_cli.losses import (
    IGNORE,
    audio_mil_loss,
    cmc_loss,
    cmcc_loss,
    cmpc_loss,
    crop_labels_from_patch_labels,
    label_consistency,
    multilabel_loss,
    patch_labels_from_audio,
    second_bce_loss,
    segmentation_loss,
    teacher_second_targets,
)

L1E = math.log(1 + math.e)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _leaf(x: list | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).clone().requires_grad_(True)


def _assert_zero_and_backprop(loss: torch.Tensor, *leaves: torch.Tensor) -> None:
    assert loss.dim() == 0 and float(loss.detach()) == 0.0
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# ---------------------------------------------------------------- multilabel / MIL


def test_multilabel_loss_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    targets = torch.tensor([[1, 0], [1, 1]])
    # per sample: mean over classes of softplus(-x) (positive) / softplus(x) (negative)
    expected = (math.log(2) + (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2) / 2
    assert float(multilabel_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_multilabel_loss_empty_batch() -> None:
    x = _leaf(torch.zeros(0, 3))
    _assert_zero_and_backprop(multilabel_loss(x, torch.zeros(0, 3)), x)


def test_audio_mil_loss_hand_values() -> None:
    # one clip, seconds x = [0, ln 3] for both classes; r = 1 -> z = log((1 + 3) / 2) = log 2
    frame = torch.tensor([[[0.0, 0.0], [math.log(3), math.log(3)]]])
    labels = torch.tensor([[1, 0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    # BCE: present class softplus(-log 2) = log 1.5, absent class softplus(log 2) = log 3
    expected = (math.log(1.5) + math.log(3)) / 2
    assert float(audio_mil_loss(frame, labels, valid, sharpness=1.0)) == pytest.approx(expected, rel=1e-6)


def test_audio_mil_loss_ignores_invalid_seconds_and_clips() -> None:
    frame = torch.tensor([[[0.0, 0.0], [math.log(3), math.log(3)], [100.0, -100.0]],
                          [[50.0, 50.0], [50.0, 50.0], [50.0, 50.0]]])
    labels = torch.tensor([[1, 0], [0, 0]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    expected = (math.log(1.5) + math.log(3)) / 2
    assert float(audio_mil_loss(frame, labels, valid, sharpness=1.0)) == pytest.approx(expected, rel=1e-6)


def test_audio_mil_loss_sharp_limit_is_max() -> None:
    frame = torch.tensor([[[0.0], [2.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    z = 2.0 - math.log(2) / 1000.0  # (1/r) log(mean exp(r x)) for r = 1000
    expected = math.log1p(math.exp(-z))
    assert float(audio_mil_loss(frame, torch.tensor([[1]]), valid, sharpness=1000.0)) == pytest.approx(expected, 1e-5)


def test_audio_mil_loss_degenerate() -> None:
    x = _leaf(torch.randn(2, 3, 4))
    _assert_zero_and_backprop(audio_mil_loss(x, torch.ones(2, 4), torch.zeros(2, 3, dtype=torch.bool)), x)
    y = _leaf(torch.zeros(0, 3, 4))
    _assert_zero_and_backprop(audio_mil_loss(y, torch.ones(0, 4), torch.zeros(0, 3, dtype=torch.bool)), y)


def test_teacher_second_targets_hand_values() -> None:
    # one clip, 3 seconds (the last invalid), classes [a, b, c]; labels {a, b}
    probs = torch.tensor([[[0.2, 0.5, 0.9], [0.4, 0.1, 0.8], [0.9, 0.9, 0.9]]])
    labels = torch.tensor([[1, 1, 0]])
    valid = torch.tensor([[True, True, False]])
    q = teacher_second_targets(probs, labels, valid)
    # a: peak 0.4 over the valid seconds -> [0.5, 1, 0]; b: peak 0.5 -> [1, 0.2, 0]; c: not labelled -> 0
    expected = torch.tensor([[[0.5, 1.0, 0.0], [1.0, 0.2, 0.0], [0.0, 0.0, 0.0]]])
    assert torch.allclose(q, expected)


def test_teacher_second_targets_silent_class_and_clip() -> None:
    # a labelled class the teacher never hears, and a clip without valid seconds: zeros, never NaN
    q = teacher_second_targets(torch.zeros(2, 2, 1), torch.ones(2, 1), torch.tensor([[True, True], [False, False]]))
    assert torch.equal(q, torch.zeros(2, 2, 1))


def test_mixed_clip_targets_are_the_larger_of_both_clips_hand_values() -> None:
    from pcas_cli.stages.train_tvp import batch_teacher_targets

    # three train clips, 2 seconds, classes [a, b]; the teacher's probabilities on each clip alone
    teacher = torch.tensor([[[0.4, 0.9], [0.8, 0.1]],   # clip 0, labels {a}
                            [[0.5, 0.2], [0.1, 0.4]],   # clip 1, labels {b}
                            [[0.6, 0.3], [0.2, 0.3]]])  # clip 2, labels {a, b}
    batch = {"index": torch.tensor([0, 2]), "labels": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
             "frame_valid": torch.ones(2, 2, dtype=torch.bool),
             "partner": torch.tensor([1, -1]), "partner_labels": torch.tensor([[0.0, 1.0], [0.0, 0.0]])}
    q = batch_teacher_targets(teacher, batch)
    # clip 0 mixed with clip 1: a from clip 0 ([0.5, 1]), b from clip 1 ([0.5, 1]); clip 2 alone: a [1, 1/3], b [1, 1]
    expected = torch.tensor([[[0.5, 0.5], [1.0, 1.0]], [[1.0, 1.0], [1 / 3, 1.0]]])
    assert torch.allclose(q, expected)
    unmixed = {k: v for k, v in batch.items() if k not in ("partner", "partner_labels")}
    assert torch.allclose(batch_teacher_targets(teacher, unmixed)[0], torch.tensor([[0.5, 0.0], [1.0, 0.0]]))


def test_second_bce_loss_hand_values() -> None:
    frame = torch.tensor([[[0.0, math.log(3)], [99.0, -99.0]]])
    targets = torch.tensor([[[1.0, 0.25], [0.0, 0.0]]])
    valid = torch.tensor([[True, False]])
    # second 0 only: class 0 softplus(-0) = log 2; class 1 (x = ln 3, y = 1/4): softplus(x) - y x = ln 4 - ln(3) / 4
    expected = (math.log(2) + math.log(4) - math.log(3) / 4) / 2
    assert float(second_bce_loss(frame, targets, valid)) == pytest.approx(expected, rel=1e-6)
    x = _leaf(torch.randn(1, 2, 2))
    _assert_zero_and_backprop(second_bce_loss(x, targets, torch.zeros(1, 2, dtype=torch.bool)), x)


# ---------------------------------------------------------------- CMC (eq. 1)


def test_label_consistency() -> None:
    a = torch.tensor([[1, 0, 1], [0, 0, 0]])
    b = torch.tensor([[0, 0, 1], [0, 1, 0]])
    assert label_consistency(a, b).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_cmc_loss_hand_values() -> None:
    # z0 = audio (1,0) {0}; z1 = video (0,1) {0}; z2 = cls (1,0) {1}; tau = 1
    # row 0: positives {1}; sims to 1, 2 = 0, 1 -> -log(e^0 / (e^0 + e^1)) = log(1 + e)
    # row 1: positives {0}; sims to 0, 2 = 0, 0 -> log 2;  row 2: no positive -> left out
    loss = cmc_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]),
                    torch.tensor([[1, 0]]), torch.tensor([[1, 0]]), torch.tensor([[0, 1]]), temperature=1.0)
    assert float(loss) == pytest.approx((L1E + math.log(2)) / 2, rel=1e-6)


def test_cmc_loss_cross_modal_only() -> None:
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    video = torch.tensor([[1.0, 0.0]])
    lab = torch.tensor([[1], [1]])
    empty, empty_lab = torch.zeros(0, 2), torch.zeros(0, 1)
    # all pairs: rows a0 and v have sims (0, 1) / (1, 0) to their two positives -> L1E - 1/2 each;
    # row a1 has sims (0 to a0, 0 to v) -> log 2
    full = cmc_loss(audio, video, empty, lab, lab[:1], empty_lab, temperature=1.0)
    assert float(full) == pytest.approx((2 * (L1E - 0.5) + math.log(2)) / 3, rel=1e-6)
    # cross-modal only: a0 and a1 each see only v (softmax of one entry -> 0); v sees a0, a1 with sims 1, 0
    cross = cmc_loss(audio, video, empty, lab, lab[:1], empty_lab, temperature=1.0, cross_modal_only=True)
    assert float(cross) == pytest.approx((L1E - 0.5) / 3, rel=1e-6)
    # with class tokens: cross-modal means audio vs visual, so a video token and a class token never meet.
    # a = (1,0), v = (0,1), c = (1,0), all {0}. Row a sees v, c (sims 0, 1; both positive) -> L1E - 1/2; rows v and c
    # see only a -> 0. All pairs: row v sees a, c (sims 0, 0) -> log 2; row c sees a, v (sims 1, 0) -> L1E - 1/2.
    a, v, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    lab0 = torch.tensor([[1]])
    cross = cmc_loss(a, v, c, lab0, lab0, lab0, temperature=1.0, cross_modal_only=True)
    assert float(cross) == pytest.approx((L1E - 0.5) / 3, rel=1e-6)
    full = cmc_loss(a, v, c, lab0, lab0, lab0, temperature=1.0)
    assert float(full) == pytest.approx((2 * (L1E - 0.5) + math.log(2)) / 3, rel=1e-6)


def test_cmc_loss_patch_matching_hand_values() -> None:
    # audio a = (1,0) {0}; video v1 {0} with patches (1,0), (0,1) pooled to (1,1); video v2 {1} with patches (0,1),
    # (0,1) pooled to (0,1); no class tokens; tau = 1. Audio-video pairs use the best patch: cos(a, v1) = 1,
    # cos(a, v2) = 0; video-video pairs the pooled tokens: cos(v1, v2) = 1/sqrt(2).
    # row a: positive v1 -> -log(e / (e + 1)) = log(1 + 1/e); row v1: positive a among (a: 1, v2: 1/sqrt 2)
    # -> log(1 + e^(1/sqrt 2 - 1)); row v2: no positive, left out.
    audio, lab_a = torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0]])
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    video, lab_v = patches.amax(dim=1), torch.tensor([[1, 0], [0, 1]])
    empty, empty_lab = torch.zeros(0, 2), torch.zeros(0, 2)
    loss = cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=patches)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1 / math.sqrt(2) - 1))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # pooled tokens instead: cos(a, v1) = 1/sqrt 2 -> a different loss
    pooled = cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0)
    assert float(pooled) != pytest.approx(expected, rel=1e-3)
    # gradients reach each video's best-matching patch only (max over patches)
    torch.manual_seed(0)
    leaf = torch.randn(2, 3, 2, requires_grad=True)
    cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=leaf).backward()
    best = F.cosine_similarity(leaf.detach(), audio[None], dim=-1).argmax(dim=1)  # (2,)
    has_grad = leaf.grad.abs().sum(dim=-1) > 0  # (2, 3)
    assert has_grad.tolist() == F.one_hot(best, 3).bool().tolist()


def test_cmc_loss_top_k_patch_matching_hand_values() -> None:
    # as above with patch_k = 2: cos(a, v1) = mean(1, 0) = 1/2, cos(a, v2) = mean(0, 0) = 0, cos(v1, v2) = 1/sqrt 2.
    # row a: positive v1 among (v1: 1/2, v2: 0) -> log(1 + e^(-1/2)); row v1: positive a among (a: 1/2, v2: 1/sqrt 2)
    # -> log(1 + e^(1/sqrt 2 - 1/2)); row v2: no positive.
    audio, lab_a = torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0]])
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    video, lab_v = patches.amax(dim=1), torch.tensor([[1, 0], [0, 1]])
    empty, empty_lab = torch.zeros(0, 2), torch.zeros(0, 2)
    loss = cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=patches, patch_k=2)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1 / math.sqrt(2) - 0.5))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # k = 1 is the best patch alone, and k beyond the patch count is the mean over all patches
    best_only = cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=patches)
    assert float(cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=patches,
                          patch_k=1)) == pytest.approx(float(best_only), rel=1e-7)
    assert float(cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=patches,
                          patch_k=5)) == pytest.approx(expected, rel=1e-6)
    # gradients reach exactly the k best-matching patches of each video
    torch.manual_seed(0)
    leaf = torch.randn(2, 4, 2, requires_grad=True)
    cmc_loss(audio, video, empty, lab_a, lab_v, empty_lab, temperature=1.0, video_patches=leaf, patch_k=2).backward()
    top2 = F.cosine_similarity(leaf.detach(), audio[None], dim=-1).topk(2, dim=1).indices  # (2, 2)
    expected_mask = torch.zeros(2, 4, dtype=torch.bool).scatter_(1, top2, True)
    assert ((leaf.grad.abs().sum(dim=-1) > 0) == expected_mask).all()


def _cmc_reference(z: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Loop-by-loop SupCon with a multi-label mask."""
    z = F.normalize(z, dim=-1)
    losses = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        pos = [j for j in others if float(labels[i] @ labels[j]) > 0]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[j]) / tau) for j in others)
        losses.append(-sum(float(z[i] @ z[p]) / tau - math.log(denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_cmc_loss_matches_loop_reference() -> None:
    a, v, c = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3, 8)
    la, lv, lc = (torch.randint(0, 2, (n, 3)) for n in (4, 3, 3))
    ref = _cmc_reference(torch.cat([a, v, c]), torch.cat([la, lv, lc]).float(), 0.2)
    assert float(cmc_loss(a, v, c, la, lv, lc, temperature=0.2)) == pytest.approx(ref, rel=1e-5)


def test_cmc_loss_degenerate() -> None:
    a, v, c = _leaf(torch.randn(2, 4)), _leaf(torch.randn(2, 4)), _leaf(torch.randn(1, 4))
    z2, z1 = torch.zeros(2, 3), torch.zeros(1, 3)
    _assert_zero_and_backprop(cmc_loss(a, v, c, z2, z2, z1), a, v, c)  # no label anywhere: no positive
    e = _leaf(torch.zeros(0, 4))
    _assert_zero_and_backprop(cmc_loss(e, e, e, torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3)), e)
    one = _leaf(torch.randn(1, 4))
    _assert_zero_and_backprop(cmc_loss(one, e, e, torch.ones(1, 3), torch.zeros(0, 3), torch.zeros(0, 3)), one)


def test_cmc_loss_gradient_finite() -> None:
    a, v, c = _leaf(torch.randn(3, 4)), _leaf(torch.randn(3, 4)), _leaf(torch.randn(3, 4))
    lab = torch.tensor([[1, 0], [0, 1], [0, 0]])  # the third sample is "silent": no positive
    loss = cmc_loss(a, v, c, lab, lab, lab, temperature=0.07)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in (a, v, c))


# ---------------------------------------------------------------- CMPC (eq. 2)


def test_patch_labels_absolute_thresholds() -> None:
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], _unit(45)]])  # cos with audio: 1, 0, 0.707
    labels = patch_labels_from_audio(patches, torch.tensor([[2.0, 0.0]]), high=0.8, low=0.3)
    assert labels.dtype == torch.long and labels.tolist() == [[1, 0, IGNORE]]


def test_patch_labels_relative_thresholds() -> None:
    audio = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[_unit(math.degrees(math.acos(c))) for c in (0.3, 0.2, 0.1)]])
    absolute = patch_labels_from_audio(patches, audio, high=0.8, low=0.15)
    relative = patch_labels_from_audio(patches, audio, high=0.8, low=0.15, normalize=True)  # -> 1, 0.5, 0
    assert absolute.tolist() == [[IGNORE, IGNORE, 0]]
    assert relative.tolist() == [[1, IGNORE, 0]]
    flat = patch_labels_from_audio(torch.ones(1, 3, 2), audio, high=0.8, low=0.15, normalize=True)
    assert flat.tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError):
        patch_labels_from_audio(patches, audio, high=0.2, low=0.5)


def test_cmpc_loss_hand_values() -> None:
    # tokens (1,0), (-1,0), (0,1): |cos| = 1 for the first pair (abs value), 0 otherwise
    tokens = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
    # 2 positive ordered pairs with |cos| 1, 4 negative pairs with cos 0 -> 0.5 * (1 - 2/3) + 0
    assert float(cmpc_loss(tokens, torch.tensor([[1, 1, 0]]))) == pytest.approx(1 / 6, rel=1e-6)
    # two non-sounding tokens are a positive pair too
    assert float(cmpc_loss(tokens, torch.tensor([[0, 0, 1]]))) == pytest.approx(1 / 6, rel=1e-6)
    diag = torch.tensor([[[1.0, 0.0], [1.0, 0.0], _unit(45)]])
    expected = 0.5 * (1 - 2 / 3) + 0.5 * (4 * math.sqrt(0.5)) / 5
    assert float(cmpc_loss(diag, torch.tensor([[1, 1, 0]]))) == pytest.approx(expected, rel=1e-6)
    # ignoring the third token leaves only the positive pair
    assert float(cmpc_loss(diag, torch.tensor([[1, 1, IGNORE]]))) == pytest.approx(1 / 6, rel=1e-6)


def test_cmpc_loss_counts_pairs_within_frames_over_the_batch() -> None:
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[1, 1], [1, 0]])
    # frame 0: 2 positive pairs, |cos| 1; frame 1: 2 negative pairs, cos 0; no pairs across frames
    assert float(cmpc_loss(tokens, labels)) == pytest.approx(0.5 * (1 - 2 / 3), rel=1e-6)


def test_cmpc_loss_degenerate() -> None:
    t = _leaf(torch.randn(2, 4, 3))
    _assert_zero_and_backprop(cmpc_loss(t, torch.full((2, 4), IGNORE)), t)
    single = _leaf(torch.randn(3, 1, 3))  # one token per frame: no pair
    _assert_zero_and_backprop(cmpc_loss(single, torch.ones(3, 1, dtype=torch.long)), single)
    empty = _leaf(torch.zeros(0, 4, 3))
    _assert_zero_and_backprop(cmpc_loss(empty, torch.zeros(0, 4, dtype=torch.long)), empty)
    zero_vec = _leaf(torch.zeros(1, 3, 2))  # zero-norm tokens: normalize must not divide by zero
    loss = cmpc_loss(zero_vec, torch.tensor([[1, 0, 1]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero_vec.grad).all()


# ---------------------------------------------------------------- CMCC (eq. 3)


def test_cmcc_loss_hand_values() -> None:
    g = torch.tensor([[1.0, 0.0]])
    crops = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # s = 1, 0, -1 at tau = 1
    one_pos = cmcc_loss(g, crops, torch.tensor([[True, False, False]]), temperature=1.0, eps=0.0)
    assert float(one_pos) == pytest.approx(math.log(math.e + 1 + math.exp(-1)) - 1, rel=1e-6)
    with_eps = cmcc_loss(g, crops, torch.tensor([[True, False, False]]), temperature=1.0, eps=1e-4)
    assert float(with_eps) == pytest.approx(math.log(math.e + 1 + math.exp(-1) + 1e-4) - 1, rel=1e-6)
    # two positives: the other positive is not in a positive's denominator
    two_pos = cmcc_loss(g, crops, torch.tensor([[True, True, False]]), temperature=1.0, eps=0.0)
    expected = ((math.log(math.e + math.exp(-1)) - 1) + math.log(1 + math.exp(-1))) / 2
    assert float(two_pos) == pytest.approx(expected, rel=1e-6)
    half_tau = cmcc_loss(g, crops, torch.tensor([[True, False, False]]), temperature=0.5, eps=0.0)
    assert float(half_tau) == pytest.approx(math.log(math.exp(2) + 1 + math.exp(-2)) - 2, rel=1e-6)


def test_cmcc_loss_images_without_positives_add_nothing() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    crops = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    pos = torch.tensor([[True, False], [False, False]])
    assert float(cmcc_loss(g, crops, pos, temperature=1.0, eps=0.0)) == pytest.approx(math.log(math.e + 1) - 1)


def test_cmcc_loss_degenerate() -> None:
    g, c = _leaf(torch.randn(2, 4)), _leaf(torch.randn(2, 3, 4))
    _assert_zero_and_backprop(cmcc_loss(g, c, torch.zeros(2, 3, dtype=torch.bool)), g, c)
    g0, c0 = _leaf(torch.zeros(0, 4)), _leaf(torch.zeros(0, 3, 4))
    _assert_zero_and_backprop(cmcc_loss(g0, c0, torch.zeros(0, 3, dtype=torch.bool)), g0, c0)
    g1, c1 = _leaf(torch.randn(2, 4)), _leaf(torch.randn(2, 3, 4))
    loss = cmcc_loss(g1, c1, torch.ones(2, 3, dtype=torch.bool), temperature=0.1)  # no negatives at all
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(g1.grad).all() and torch.isfinite(c1.grad).all()


def test_crop_labels_from_patch_labels() -> None:
    labels = torch.tensor([[[1, 0], [0, 0]]])  # 2x2 grid, top-left sounding
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0],  # whole image: share 1/4
                           [0.5, 0.5, 1.0, 1.0],  # bottom-right cell: 0
                           [0.0, 0.0, 0.5, 0.5],  # top-left cell: 1
                           [0.25, 0.25, 0.75, 0.75],  # a quarter of every cell: 1/4
                           [0.3, 0.3, 0.3, 0.6]]])  # zero area
    assert crop_labels_from_patch_labels(labels, boxes).tolist() == [[True, False, True, True, False]]
    assert crop_labels_from_patch_labels(labels, boxes, threshold=0.3).tolist() == [[False, False, True, False, False]]
    ignored = torch.tensor([[[IGNORE, 0], [0, 0]]])  # ignored counts half: share 1/8 over the whole image
    whole = boxes[:, :1]
    assert crop_labels_from_patch_labels(ignored, whole, threshold=0.1).tolist() == [[True]]
    assert crop_labels_from_patch_labels(ignored, whole, threshold=0.2).tolist() == [[False]]
    # ignored cells not counted (the paper's wording): only the sounding cell makes a crop positive
    mixed = torch.tensor([[[IGNORE, IGNORE], [IGNORE, 1]]])  # one sounding cell (bottom right) among ignored ones
    assert crop_labels_from_patch_labels(ignored, whole, ignored_score=0.0).tolist() == [[False]]
    assert crop_labels_from_patch_labels(mixed, boxes[:, :3], ignored_score=0.0).tolist() == [[True, True, False]]
    assert crop_labels_from_patch_labels(mixed, boxes[:, :3]).tolist() == [[True, True, True]]
    # boxes are (x0, y0, x1, y1), x along a row: on a 2 x 4 grid (h x w) sounding at the top right, the right
    # quarter of the top half is that cell; the same numbers read as (y0, x0, y1, x1) would miss it
    top_right = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 0]]])
    boxes = torch.tensor([[[0.75, 0.0, 1.0, 0.5],  # the top-right cell
                           [0.0, 0.75, 0.5, 1.0]]])  # the same numbers transposed: bottom-left, nothing sounds
    assert crop_labels_from_patch_labels(top_right, boxes).tolist() == [[True, False]]


# ---------------------------------------------------------------- segmentation


def test_segmentation_loss_hand_values() -> None:
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3)]]]])  # (1, 2, 1, 2)
    # pixel 0: uniform -> log 2; pixel 1: p(class 1) = 3/4 -> log 4/3
    both = segmentation_loss(logits, torch.tensor([[[0, 1]]]))
    assert float(both) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    one = segmentation_loss(logits, torch.tensor([[[0, IGNORE]]]))
    assert float(one) == pytest.approx(math.log(2), rel=1e-6)


def test_segmentation_loss_resizes_and_degenerate() -> None:
    small = _leaf(torch.randn(2, 3, 4, 4))
    loss = segmentation_loss(small, torch.randint(0, 3, (2, 8, 8)))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0 and torch.isfinite(small.grad).all()
    x = _leaf(torch.randn(2, 3, 4, 4))
    _assert_zero_and_backprop(segmentation_loss(x, torch.full((2, 4, 4), IGNORE)), x)
    e = _leaf(torch.zeros(0, 3, 4, 4))
    _assert_zero_and_backprop(segmentation_loss(e, torch.zeros(0, 4, 4, dtype=torch.long)), e)


def test_contrast_losses_hold_under_float16_autocast() -> None:
    """AMP runs the model in float16; the contrasts must still compute in float32 (a float16 matmul cannot hold the
    -1e9 mask, and CMPC's sum over pairs overflows). CPU autocast stands in for CUDA's here."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 6, 8, generator=g) * 30  # large activations, as float16 overflow needs
    labels = torch.tensor([[1, 0, 1, 255, 0, 1]] * 4)
    audio, video, cls = (torch.randn(n, 8, generator=g) for n in (3, 4, 4))
    multi_hot = torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0]])
    positive = torch.tensor([[True, False, True], [False, True, False], [True, True, False], [False, False, True]])
    crops = torch.randn(4, 3, 8, generator=g)

    def losses() -> list[torch.Tensor]:
        return [cmc_loss(audio, video, cls, multi_hot[:3], multi_hot, multi_hot),
                cmpc_loss(tokens, labels), cmcc_loss(tokens[:, 0], crops, positive)]

    expected = losses()
    with torch.autocast("cpu", dtype=torch.float16):
        got = losses()
    for e, a in zip(expected, got):
        assert a.dtype == torch.float32 and torch.isfinite(a)
        torch.testing.assert_close(a, e)
