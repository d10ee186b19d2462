from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from pcas_cli.cam import (
    binary_from_semantic,
    cam_to_label,
    cam_to_scores,
    mask_absent,
    multiscale_cam,
    normalize_cam,
    scores_to_probs,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _row(*values: float) -> torch.Tensor:
    """A (1, 1, 1, N) map from literal values."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


# --- normalisation and masking --------------------------------------------------------------------------------------

def test_normalize_cam_per_class_min_max():
    cam = torch.cat([_row(1.0, 2.0, 3.0), _row(5.0, 5.0, 5.0), _row(-2.0, 0.0, 2.0)], dim=1)  # (1, 3, 1, 3)
    out = normalize_cam(cam, eps=0.0 + 1e-5)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 1 / (2 + 1e-5), 2 / (2 + 1e-5)]))
    torch.testing.assert_close(out[0, 1, 0], torch.zeros(3))  # constant map -> zeros, not NaN
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([0.0, 2 / (4 + 1e-5), 4 / (4 + 1e-5)]))


def test_normalize_cam_is_per_image():
    cam = torch.stack([torch.arange(4.0).view(1, 2, 2), 10 * torch.arange(4.0).view(1, 2, 2)])  # (2, 1, 2, 2)
    out = normalize_cam(cam)
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)  # scale per image is removed
    assert out.max() < 1.0 and out.min() == 0.0


def test_mask_absent_hard_and_soft():
    cam = torch.ones(2, 3, 2, 2)
    presence = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    out = mask_absent(cam, presence)
    assert out[0, 1].abs().sum() == 0 and out[0, 0].eq(1).all() and out[0, 2].eq(1).all()
    assert out[1, 0].abs().sum() == 0 and out[1, 1].eq(0.5).all()
    with pytest.raises(ValueError):
        mask_absent(cam, torch.ones(2, 2))


# --- labels and scores ----------------------------------------------------------------------------------------------

def _two_class_cam() -> torch.Tensor:
    # pixel:          0     1     2     3     4     5
    c1 = _row(0.90, 0.60, 0.50, 0.20, 0.10, 0.70)
    c2 = _row(0.10, 0.65, 0.40, 0.30, 0.00, 0.25)
    return torch.cat([c1, c2], dim=1)  # (1, 2, 1, 6)


def test_cam_to_label_background_threshold_and_argmax():
    label = cam_to_label(_two_class_cam(), bg_threshold=0.5)
    # max values 0.9(c1) 0.65(c2) 0.5(tie with threshold -> bg) 0.3 0.1 0.7(c1)
    assert label.tolist() == [[[1, 2, 0, 0, 0, 1]]]
    assert label.dtype == torch.long


def test_cam_to_label_three_bands():
    label = cam_to_label(_two_class_cam(), bg_threshold=0.5, high=0.7, low=0.25, ignore_index=255)
    # > 0.7 class; (0.25, 0.7] ignore; <= 0.25 background. 0.7 itself is "<= high" -> ignore.
    assert label.tolist() == [[[1, 255, 255, 255, 0, 255]]]


def test_cam_to_label_checks_bands_and_empty_class_axis():
    with pytest.raises(ValueError):
        cam_to_label(_two_class_cam(), 0.5, high=0.7)
    with pytest.raises(ValueError):
        cam_to_label(_two_class_cam(), 0.5, high=0.2, low=0.3)
    assert cam_to_label(torch.zeros(2, 0, 3, 4), 0.5).eq(0).all()


def test_absent_class_never_labelled():
    cam = torch.rand(2, 3, 5, 5)
    presence = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    label = cam_to_label(mask_absent(normalize_cam(cam), presence), bg_threshold=0.3)
    assert not (label[0] == 2).any()
    assert set(label[1].unique().tolist()) <= {0, 3}


def test_cam_to_scores_argmax_matches_cam_to_label():
    cam = normalize_cam(torch.rand(3, 4, 7, 6))
    scores = cam_to_scores(cam, 0.45)  # (3, 5, 7, 6)
    assert scores.shape == (3, 5, 7, 6) and scores[:, 0].eq(0.45).all()
    torch.testing.assert_close(scores[:, 1:], cam)
    # argmax prefers the first maximum, i.e. background on ties, like cam_to_label's "<=".
    assert torch.equal(scores.argmax(dim=1), cam_to_label(cam, 0.45))


def test_scores_to_probs_softmax_and_absent_classes():
    scores = cam_to_scores(torch.cat([_row(1.0), _row(0.0)], dim=1), 0.5)  # (1, 3, 1, 1): [0.5, 1.0, 0.0]
    p = scores_to_probs(scores)
    z = math.exp(0.5) + math.exp(1.0) + 1.0
    torch.testing.assert_close(p.flatten(), torch.tensor([math.exp(0.5) / z, math.exp(1.0) / z, 1 / z]))
    p = scores_to_probs(scores, class_presence=torch.tensor([[1.0, 0.0]]))
    assert p[0, 2].item() == 0.0  # an absent class gets exactly zero probability
    torch.testing.assert_close(p[0, :2].flatten(), torch.tensor([1 / (1 + math.e ** 0.5), 1 / (1 + math.e ** -0.5)]))
    sharp = scores_to_probs(scores, temperature=0.1)
    assert sharp[0, 1].item() > 0.99
    with pytest.raises(ValueError):
        scores_to_probs(scores, temperature=0.0)


def test_probs_sum_to_one_and_keep_argmax():
    cam = normalize_cam(torch.rand(2, 3, 4, 4))
    scores = cam_to_scores(cam, 0.5)
    p = scores_to_probs(scores)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 4, 4))
    assert torch.equal(p.argmax(dim=1), scores.argmax(dim=1))


def test_binary_from_semantic_is_total_foreground_mass():
    probs = torch.tensor([[0.3, 0.4, 0.3], [0.45, 0.3, 0.25], [0.9, 0.05, 0.05]]).T.reshape(1, 3, 1, 3)
    fg = binary_from_semantic(probs)  # (1, 1, 3)
    torch.testing.assert_close(fg.flatten(), torch.tensor([0.7, 0.55, 0.1]))
    # Pixel 1: background is the single most likely channel, yet some sounding object is more likely than not.
    assert probs.argmax(dim=1)[0, 0, 1] == 0 and fg[0, 0, 1] > 0.5
    assert fg.shape == (1, 1, 3)


# --- multi-scale CAM ------------------------------------------------------------------------------------------------

def test_multiscale_constant_image_sums_scales_and_relus():
    def first_channel(x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]  # (B, 1, h, w): the CAM is the image's first channel

    img = torch.full((2, 3, 8, 8), 2.0)
    out = multiscale_cam(first_channel, img)
    assert out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out, torch.full_like(out, 6.0))  # three scales, each 2.0
    assert multiscale_cam(first_channel, -img).eq(0).all()  # ReLU per scale
    torch.testing.assert_close(multiscale_cam(first_channel, img, scales=(1.0,), flip=False), img[:, :1])


def test_multiscale_flip_merges_by_max_after_flipping_back():
    def left_half(x: torch.Tensor) -> torch.Tensor:
        # Ignores the image: 1 on the left half of the token grid, 0 on the right. Not flip-equivariant.
        b, _, h, w = x.shape
        cam = torch.zeros(b, 1, h // 2, w // 2)
        cam[..., : w // 4] = 1.0
        return cam

    img = torch.zeros(1, 3, 16, 16)
    no_flip = multiscale_cam(left_half, img, scales=(1.0,), flip=False)
    with_flip = multiscale_cam(left_half, img, scales=(1.0,), flip=True)
    assert no_flip[..., :6].eq(1).all() and no_flip[..., 10:].eq(0).all()
    torch.testing.assert_close(with_flip, torch.ones_like(with_flip))  # left OR flipped-back right = everywhere


def test_multiscale_calls_cam_fn_at_each_scale_with_flipped_batch():
    sizes = []

    def pooled(x: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(x.shape))
        return torch.nn.functional.avg_pool2d(x[:, :2], 2)  # token grid at half resolution

    out = multiscale_cam(pooled, torch.rand(3, 3, 8, 10), scales=(1.0, 0.5, 1.5))
    assert sizes == [(6, 3, 8, 10), (6, 3, 4, 5), (6, 3, 12, 15)]
    assert out.shape == (3, 2, 8, 10) and (out >= 0).all()


def test_multiscale_flip_consistency():
    # With flip merging, the CAM of a mirrored image is the mirrored CAM, for any cam_fn.
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    bias = torch.randn(1, 4, 6, 6)  # position-dependent, so cam_fn itself is not flip-equivariant

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        tokens = torch.nn.functional.adaptive_avg_pool2d(conv(x), 6)  # (B, 4, 6, 6)
        return tokens + bias

    img = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        a = multiscale_cam(cam_fn, img.flip(-1))
        b = multiscale_cam(cam_fn, img).flip(-1)
        c = multiscale_cam(cam_fn, img.flip(-1), flip=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(c, b, atol=1e-3)  # without the flip merge the property does not hold


# --- pseudo-label: presence threshold, background threshold, argmax, binary vs semantic ---------------------------

def _frame_maps():
    from pcas_cli.stages.pseudo_label import FrameMaps

    # One frame, 2 classes over 4 pixels: class 1 strong on the left, class 2 weaker on the right.
    maps = torch.tensor([[0.9, 0.6, 0.1, 0.0], [0.0, 0.2, 0.5, 0.8]]).view(1, 2, 1, 4)
    presence = torch.tensor([[0.9, 0.45]])  # class 2 is only weakly heard
    return FrameMaps(maps, presence, torch.ones(1, 2, dtype=torch.bool))


def test_pseudo_label_semantic_thresholds_and_argmax():
    from pcas_cli.stages.pseudo_label import Thresholds, to_prediction

    fm = _frame_maps()
    scores, masks = to_prediction(fm, Thresholds(presence=0.4, background=0.3), "semantic")
    assert masks.tolist() == [[[1, 1, 2, 2]]]
    assert scores.shape == (1, 3, 1, 4) and abs(float(scores.astype("float32").sum(1).mean()) - 1) < 1e-3
    # presence 0.5 drops class 2 (absent classes are zeroed: never labelled, probability 0)
    scores, masks = to_prediction(fm, Thresholds(presence=0.5, background=0.3), "semantic")
    assert masks.tolist() == [[[1, 1, 0, 0]]] and float(scores[0, 2].max()) == 0.0
    # a higher background threshold turns weak activations into background
    _, masks = to_prediction(fm, Thresholds(presence=0.4, background=0.7), "semantic")
    assert masks.tolist() == [[[1, 0, 0, 2]]]


def test_pseudo_label_binary_and_allowed_mask():
    from pcas_cli.stages.pseudo_label import FrameMaps, Thresholds, to_prediction

    fm = _frame_maps()
    scores, masks = to_prediction(fm, Thresholds(presence=0.4, background=0.3), "binary")
    assert masks.tolist() == [[[1, 1, 1, 1]]] and scores.shape == (1, 2, 1, 4)
    # a class outside the allowed set (e.g. not in a train clip's video labels) is removed whatever its presence
    blocked = FrameMaps(fm.maps, fm.presence, torch.tensor([[False, True]]))
    _, masks = to_prediction(blocked, Thresholds(presence=0.4, background=0.3), "semantic")
    assert masks.tolist() == [[[0, 0, 2, 2]]]


def test_pseudo_label_similarity_sharpening_exponent():
    from pcas_cli.stages.pseudo_label import FrameMaps, Thresholds, to_prediction

    fm = _frame_maps()
    sim = torch.tensor([[1.0, 0.25, 1.0, 1.0]]).view(1, 1, 4)  # the audio points away from pixel 1
    sharp = FrameMaps(fm.maps, fm.presence, fm.allowed, similarity=sim)
    torch.testing.assert_close(sharp.sharpened(0.0), fm.maps)  # alpha 0 = plain CAMs
    torch.testing.assert_close(sharp.sharpened(0.5)[0, 0, 0], torch.tensor([0.9, 0.3, 0.1, 0.0]))
    _, plain = to_prediction(sharp, Thresholds(0.4, 0.3, 0.0), "semantic")
    _, masks = to_prediction(sharp, Thresholds(0.4, 0.3, 1.0), "semantic")
    assert plain.tolist() == [[[1, 1, 2, 2]]] and masks.tolist() == [[[1, 0, 2, 2]]]  # 0.6 * 0.25 < 0.3


def test_pseudo_label_binary_soft_scores_agree_with_mask_for_several_sources():
    from pcas_cli.stages.pseudo_label import FrameMaps, Thresholds, to_prediction

    # Three heard classes, each active on one pixel; pixel 3 is background for all of them.
    maps = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]).view(1, 3, 1, 4)
    fm = FrameMaps(maps, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    scores, masks = to_prediction(fm, Thresholds(presence=0.5, background=0.5), "binary")
    assert masks.tolist() == [[[1, 1, 1, 0]]]
    fg = scores[0, 1, 0].astype("float32")
    assert (fg[:3] > 0.5).all() and fg[3] < 0.5  # 1 - p_bg would give pixel 3 e.g. 3 / (e^0.5 + 3) = 0.65
    # nothing heard: foreground probability exactly 0
    silent = FrameMaps(maps, torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool))
    scores, masks = to_prediction(silent, Thresholds(presence=0.5, background=0.5), "binary")
    assert masks.sum() == 0 and float(scores[0, 1].max()) == 0.0


def test_pseudo_label_visual_gate_weighs_in_the_clip_level_visual_evidence():
    from pcas_cli.stages.pseudo_label import FrameMaps, Thresholds, to_prediction

    fm = _frame_maps()  # heard: class 1 at 0.9, class 2 at 0.45
    gated = FrameMaps(fm.maps, fm.presence, fm.allowed, clip_visual=torch.tensor([[0.1, 0.8]]))
    torch.testing.assert_close(gated.gated(0.0), fm.presence)  # beta 0 = the listener alone
    torch.testing.assert_close(gated.gated(0.5), torch.tensor([[0.3, 0.6]]))  # sqrt(0.9 * 0.1), sqrt(0.45 * 0.8)
    torch.testing.assert_close(gated.gated(1.0), torch.tensor([[0.1, 0.8]]))
    # at presence 0.5: the listener alone keeps class 1 only; gated by what the classifier saw, class 2 only
    _, alone = to_prediction(gated, Thresholds(0.5, 0.3, 0.0, 0.0), "semantic")
    _, masks = to_prediction(gated, Thresholds(0.5, 0.3, 0.0, 0.5), "semantic")
    assert alone.tolist() == [[[1, 1, 0, 0]]] and masks.tolist() == [[[0, 0, 2, 2]]]
    assert FrameMaps(fm.maps, fm.presence, fm.allowed).gated(0.5) is fm.presence  # no visual evidence: unchanged


def test_sweep_masks_per_background_equal_the_per_threshold_path():
    from pcas_cli.stages.pseudo_label import FrameMaps, Thresholds, class_scores, masks_from_scores, \
        masks_per_background

    g = torch.Generator().manual_seed(0)
    # maps on a coarse grid of values so ties (between classes, and with the background threshold) really occur
    maps = (torch.randint(0, 11, (3, 4, 5, 6), generator=g) / 10).float()
    fm = FrameMaps(maps, torch.rand(3, 4, generator=g), torch.rand(3, 4, generator=g) > 0.2,
                   similarity=torch.rand(3, 5, 6, generator=g), clip_visual=torch.rand(1, 4, generator=g))
    backgrounds = (0.0, 0.2, 0.3, 0.5, 0.7, 1.0)
    for task in ("semantic", "binary"):
        for presence in (0.2, 0.5, 0.9):
            for alpha, beta in ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5)):
                head = Thresholds(presence, 0.0, alpha, beta)
                fast = dict(masks_per_background(fm, head, backgrounds, task))
                for b in backgrounds:
                    th = Thresholds(presence, b, alpha, beta)
                    present, scores = class_scores(fm, th)
                    np.testing.assert_array_equal(fast[b], masks_from_scores(scores, present, task))
