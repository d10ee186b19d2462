"""Class activation maps (CAMs): multi-scale inference, normalisation, thresholding into labels and scores.

Pure tensor functions, no model code: a model supplies `cam_fn(images) -> raw CAMs` and these helpers turn its
output into the per-pixel scores and labels the pseudo-label and CRF stages need. The recipe follows ToCo
(rulixiang/ToCo `utils/camutils.py`; see docs/reference/method-facts.md "Most important facts" 2 and 3):

1. `multiscale_cam`: scales (1.0, 0.5, 1.5), each merged with its horizontal flip by element-wise max, upsampled
   bilinearly to the input size, ReLU, summed over scales;
2. `normalize_cam`: per image and class min-max normalisation to [0, 1];
3. `mask_absent`: classes absent from the (video-level or predicted) label are zeroed;
4. `cam_to_label` / `cam_to_scores`: background comes only from a threshold (the CAM has no background channel).

PCAS makes the CAM *audio-guided* (paper: "Listening-before-Segmentation") in `pcas pseudo-label`: each class map is
multiplied by the per-frame normalised similarity between the visual patches and the audio token, raised to a power
chosen on val (`stages.pseudo_label.FrameMaps.sharpened`), so that a visible but silent object is suppressed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# ToCo's numerical guard in the normaliser (utils/camutils.py).
CAM_EPS = 1e-5


def multiscale_cam(cam_fn: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5),
                   flip: bool = True) -> Tensor:
    """Multi-scale, flip-augmented CAM, summed over scales (ToCo; method-facts 2).

    Args:
        cam_fn: maps images (B, 3, h', w') to raw CAMs (B, C, h, w) at token resolution.
        images: (B, 3, H, W) input images (already normalised for the model).
        scales: input rescaling factors; each scaled size is rounded to whole pixels.
        flip: also run the horizontally flipped input and merge (after flipping back) by element-wise max.

    Returns:
        (B, C, H, W) non-negative CAM: the sum over scales of ReLU(upsampled max(cam, flipped cam)). Not normalised;
        call `normalize_cam` next.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not scales:
        raise ValueError("at least one scale is needed")
    b, _, h, w = images.shape
    total: Tensor | None = None
    for s in scales:
        x = images
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)  # (B, 3, h_s, w_s)
        if flip:
            # One forward over [x; flip(x)] as ToCo does; the flipped half is flipped back before merging.
            both = cam_fn(torch.cat([x, x.flip(-1)], dim=0))  # (2B, C, h, w)
            cam = torch.maximum(both[:b], both[b:].flip(-1))  # (B, C, h, w)
        else:
            cam = cam_fn(x)  # (B, C, h, w)
        cam = F.relu(F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False))  # (B, C, H, W)
        total = cam if total is None else total + cam
    assert total is not None
    return total


def normalize_cam(cam: Tensor, eps: float = CAM_EPS) -> Tensor:
    """Per-image, per-class min-max normalisation to [0, 1].

    Formula: `(cam - min_c) / (max_c - min_c + eps)`, with min/max taken over the pixels of each (image, class)
    map. This is exactly ToCo's `cam += max_pool(-cam); cam /= max_pool(cam) + eps` (the division uses the maximum
    of the already shifted map, i.e. max - min). Per class, so that every present class reaches ~1 at its most
    confident pixel and the fixed background threshold means the same thing for weak and strong classes. A constant
    map (e.g. an absent class already zeroed, or an all-zero CAM) normalises to all zeros, never to NaN.

    Args:
        cam: (B, C, H, W) CAM.
        eps: guard against division by zero.

    Returns:
        (B, C, H, W) CAM in [0, 1).
    """
    lo = cam.amin(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    shifted = cam - lo
    hi = shifted.amax(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    return shifted / (hi + eps)


def mask_absent(cam: Tensor, class_presence: Tensor) -> Tensor:
    """Zero the maps of classes that are not present (ToCo's `cls_label * cam`).

    Args:
        cam: (B, C, H, W) CAM.
        class_presence: (B, C) in [0, 1]; 0 zeroes the class. Soft values (e.g. per-frame sounding probabilities
            from the audio branch) scale the map instead.

    Returns:
        (B, C, H, W) masked CAM.
    """
    if class_presence.shape != cam.shape[:2]:
        raise ValueError(f"class_presence {tuple(class_presence.shape)} does not match cam {tuple(cam.shape[:2])}")
    return cam * class_presence.to(cam.dtype)[:, :, None, None]


def cam_to_scores(cam_norm: Tensor, bg_threshold: float) -> Tensor:
    """Prepend a constant background plane (ToCo `refine_cams_with_bkg_v2`): channel 0 = background.

    Args:
        cam_norm: (B, C, H, W) normalised (and masked) CAM in [0, 1].
        bg_threshold: background score; the argmax over the result is background wherever every class is
            <= bg_threshold (ties go to background, matching `cam_to_label`'s `<=`).

    Returns:
        (B, C + 1, H, W) scores.
    """
    b, _, h, w = cam_norm.shape
    bg = cam_norm.new_full((b, 1, h, w), float(bg_threshold))  # (B, 1, H, W)
    return torch.cat([bg, cam_norm], dim=1)


def scores_to_probs(scores: Tensor, temperature: float = 1.0, class_presence: Tensor | None = None) -> Tensor:
    """Softmax over channels, restricted to background plus the present classes.

    Choice: a softmax with temperature 1, as ToCo does before its CRF (`tools/infer_cam_crf_label.py`): with scores
    in [0, 1] it gives a deliberately soft unary (at most e/(e+1) ~ 0.73 for two channels), leaving room for the
    CRF's pairwise terms to move uncertain pixels; a lower temperature makes it more confident. Plain division by
    the sum is not used because it gives probability 0 to the background plane when bg_threshold is 0 and maps
    scores that differ only by an offset to different ratios. Absent classes get probability exactly 0 (a zeroed
    CAM would otherwise still get exp(0)/Z), so the CRF never introduces them.

    Args:
        scores: (B, C + 1, H, W) from `cam_to_scores`.
        temperature: softmax temperature (> 0).
        class_presence: optional (B, C); classes with presence <= 0 are excluded. Background is always kept.

    Returns:
        (B, C + 1, H, W) probabilities summing to 1 over channels; argmax equals the argmax of `scores` over the
        kept channels.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = scores / temperature
    if class_presence is not None:
        b = scores.shape[0]
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=scores.device), class_presence > 0], dim=1)
        logits = logits.masked_fill(~keep[:, :, None, None], float("-inf"))  # (B, C + 1, H, W)
    return torch.softmax(logits, dim=1)


def cam_to_label(cam_norm: Tensor, bg_threshold: float, high: float | None = None, low: float | None = None,
                 ignore_index: int = 255) -> Tensor:
    """Hard labels from a normalised CAM (ToCo `cam_to_label`; method-facts 3).

    Without bands: label = argmax class + 1, background (0) where the maximum is <= bg_threshold.
    With `high` and `low` (ToCo `ignore_mid`): class where max > high, `ignore_index` where low < max <= high,
    background where max <= low; bg_threshold then has no effect whenever low <= bg_threshold <= high.

    Args:
        cam_norm: (B, C, H, W) normalised CAM with absent classes already zeroed (`mask_absent`).
        bg_threshold: background threshold (VOC 0.5, COCO 0.45).
        high: upper band edge (VOC 0.7), or None.
        low: lower band edge (VOC 0.25), or None.
        ignore_index: label for the uncertain band.

    Returns:
        (B, H, W) int64 labels in {0 (background), 1..C, ignore_index}.
    """
    if (high is None) != (low is None):
        raise ValueError("give both high and low, or neither")
    if high is not None and low is not None and low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    b, c, h, w = cam_norm.shape
    if c == 0:
        return torch.zeros(b, h, w, dtype=torch.long, device=cam_norm.device)
    value, idx = cam_norm.max(dim=1)  # (B, H, W) each
    label = idx + 1
    label[value <= bg_threshold] = 0
    if high is not None and low is not None:
        label[value <= high] = ignore_index
        label[value <= low] = 0
    return label


def binary_from_semantic(probs: Tensor) -> Tensor:
    """Foreground probability for binary ("is it sounding") datasets: 1 - p(background).

    Choice: the total foreground mass rather than the largest single class, because a sounding region shared by
    two plausible classes (e.g. guitar 0.4, ukulele 0.3, background 0.3) is confidently foreground even though no
    single class beats 0.5. Thresholding at 0.5 therefore means "more likely some sounding object than background".

    Args:
        probs: (B, C + 1, H, W) probabilities, channel 0 = background (e.g. from `scores_to_probs`).

    Returns:
        (B, H, W) foreground probability in [0, 1].
    """
    return (1.0 - probs[:, 0]).clamp(0.0, 1.0)
