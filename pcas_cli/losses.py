"""PCAS losses as pure functions on tensors (paper §3; ToCo / SupCon anchors in method-facts §1-§4, §7).

Every loss computes in float32, returns a scalar, and stays finite and differentiable on degenerate input (empty
batch, no positives, everything ignored): it then returns an exact zero that is still connected to the graph, so
`loss.backward()` works and gives zero gradients.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Tensor])

IGNORE = 255  # label of ignored tokens / pixels
_NEG = -1e9  # finite "minus infinity" for masked logits: exp() underflows to 0 and logsumexp never sees all -inf


def in_float32(fn: _F) -> _F:
    """Run a loss in float32 even inside an autocast region (AMP): the contrasts' float16 matmuls cannot hold the
    -1e9 mask and overflow their sums over the batch's pairs, so their inputs are cast up and autocast is paused."""
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        with contextlib.ExitStack() as stack:
            for device in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _zero(*tensors: Tensor) -> Tensor:
    """A 0 that keeps the graph (and device / dtype) of the inputs."""
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), device=tensors[0].device)).float()


def multilabel_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Multilabel soft margin loss on video-level labels (ToCo classification, method-facts §1).

    Args:
        logits: (B, C) class scores.
        targets: (B, C) multi-hot {0, 1}.
    """
    if logits.numel() == 0:
        return _zero(logits)
    return F.multilabel_soft_margin_loss(logits.float(), targets.float())


def audio_mil_loss(frame_logits: Tensor, video_labels: Tensor, second_valid: Tensor, sharpness: float = 5.0) -> Tensor:
    """Multiple-instance loss training per-second audio classification from video-level labels.

    A class in the video's label set must sound in at least one second; a class absent from the set sounds in none.
    Both statements are about the *maximum* over seconds, so the clip-level score of class c is a smooth maximum of
    its per-second logits over the valid seconds, log-sum-exp pooling with sharpness r:

        z_c = (1 / r) * log( (1 / |V|) * sum_{t in V} exp(r * x_{t,c}) )

    which moves from the mean (r -> 0) to the max (r -> inf). A finite r (default 5) sends gradient to every second
    rather than only the arg-max one, which trains faster early on, while staying close to the max so that one loud
    second is enough for a present class. The loss is binary cross-entropy with logits between z and the video labels,
    averaged over clips with at least one valid second and classes; 0 if there is none.

    Args:
        frame_logits: (B, T, C) per-second logits.
        video_labels: (B, C) multi-hot {0, 1}.
        second_valid: (B, T) bool.
        sharpness: r > 0.
    """
    x = frame_logits.float()
    valid = second_valid.bool()
    clip_ok = valid.any(dim=1)  # (B,)
    if not bool(clip_ok.any()):
        return _zero(frame_logits)
    x = x.masked_fill(~valid[:, :, None], _NEG)  # (B, T, C): invalid seconds drop out of the pooling
    n_valid = valid.sum(dim=1).clamp(min=1).float()  # (B,)
    z = (torch.logsumexp(sharpness * x, dim=1) - torch.log(n_valid)[:, None]) / sharpness  # (B, C)
    return F.binary_cross_entropy_with_logits(z[clip_ok], video_labels[clip_ok].float())


def teacher_second_targets(teacher_probs: Tensor, video_labels: Tensor, second_valid: Tensor) -> Tensor:
    """Per-second soft targets for a self-trained listener, from a trained MIL listener and the video labels.

    Beyond the paper (results/avdigits-diagnostics.md). The MIL loss asks a labelled class to sound in *some* second,
    so among a clip's labelled classes it never says which sounds when: a listener may hear "one" in the second where
    "seven" is spoken whenever both are in the clip, and learns little about telling them apart. Restricted to the
    labels, a trained MIL listener places each class in time well, so its probabilities become per-second targets:

        q_{t,c} = y_c * p_{t,c} / max_{s in V} p_{s,c}

    A labelled class sounds in its most likely valid second (target 1, the MIL assumption) and elsewhere in proportion;
    a class outside the labels sounds in no second (target 0: exact under video labels). Invalid seconds get 0.

    Args:
        teacher_probs: (B, T, C) per-second probabilities in [0, 1].
        video_labels: (B, C) multi-hot {0, 1}.
        second_valid: (B, T) bool.
    Returns:
        (B, T, C) targets in [0, 1].
    """
    p = teacher_probs.float() * second_valid.bool()[:, :, None]  # (B, T, C)
    peak = p.amax(dim=1, keepdim=True).clamp_min(1e-12)  # (B, 1, C)
    return p / peak * video_labels.float()[:, None, :]


def second_bce_loss(frame_logits: Tensor, targets: Tensor, second_valid: Tensor) -> Tensor:
    """Binary cross-entropy with logits between per-second logits and (soft) targets, averaged over valid seconds and
    classes; 0 if no second is valid.

    Args:
        frame_logits: (B, T, C).
        targets: (B, T, C) in [0, 1].
        second_valid: (B, T) bool.
    """
    valid = second_valid.bool()
    if not bool(valid.any()):
        return _zero(frame_logits)
    return F.binary_cross_entropy_with_logits(frame_logits.float()[valid], targets.float()[valid])


def label_consistency(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Y_ij = 1 if the multi-hot label sets i and j share a class (paper eq. 1): (Na, C), (Nb, C) -> (Na, Nb) float."""
    return ((labels_a.float() @ labels_b.float().T) > 0).float()


@in_float32
def cmc_loss(audio: Tensor, video: Tensor, cls: Tensor, audio_labels: Tensor, video_labels: Tensor,
             cls_labels: Tensor, temperature: float = 0.1, cross_modal_only: bool = False,
             video_patches: Tensor | None = None, patch_k: int = 1) -> Tensor:
    """Cross-Modal Contrast (paper §3.2.1, eq. 1): supervised contrast in the shared semantic space.

    The audio semantic tokens, video semantic tokens and video class tokens are pooled into one set of N anchors.
    For anchor i, S_ij = cos(z_i, z_j) / tau over all j != i, and the target is row i of the label-consistency
    matrix Y (1 where the label sets intersect) with self-pairs removed, normalised to sum to 1. The loss of row i is
    the cross-entropy CE(softmax(S_i), Y_i / sum_j Y_ij) = -(1/|P(i)|) sum_{p in P(i)} log softmax_p(S_i), i.e.
    SupCon with a multi-label mask (method-facts §7). Rows without positives (e.g. a silent second with an empty
    label set) are left out of the mean; if no row has a positive the loss is 0.

    Args:
        audio: (Na, D) audio semantic tokens.
        video: (Nv, D) video semantic tokens.
        cls: (Nc, D) video class tokens.
        audio_labels: (Na, C) multi-hot labels; likewise `video_labels` (Nv, C) and `cls_labels` (Nc, C).
        temperature: tau.
        cross_modal_only: contrast audio tokens only against visual tokens (video and class tokens) and visual
            tokens only against audio tokens (positives and denominator): the audio-visual contrast of eq. 1
            (method-facts §7), without the audio-audio, video-video, video-class and class-class pairs.
        video_patches: (Nv, P, D) the patch tokens `video` was pooled from. When given, an audio token and a video
            are as similar as the audio token and the video's best-matching patch, max_p cos(a_i, patch_jp)
            (multiple-instance matching as in EZ-VSL), in both directions; other pairs keep the pooled token. Why:
            CMPC labels patches by their own similarity to the audio token, which aligning pooled tokens does not
            train (measured: README, "Which patches sound").
        patch_k: with `video_patches`, score the pair by the mean of the k best-matching patches' cosines instead
            of the best one alone (k = 1: max). A sounding object covers several patches; the max trains one of them
            to resemble the audio, the top-k mean trains about as many as the object covers. Measured: it spreads
            the similarity instead (results/table4-study.md, section 5).
    """
    z = F.normalize(torch.cat([audio, video, cls]).float(), dim=-1)  # (N, D)
    labels = torch.cat([audio_labels, video_labels, cls_labels]).float()  # (N, C)
    n = z.shape[0]
    if n < 2:
        return _zero(audio, video, cls)
    allowed = ~torch.eye(n, dtype=torch.bool, device=z.device)  # (N, N): self-pairs excluded
    if cross_modal_only:
        is_audio = torch.arange(n, device=z.device) < len(audio)  # (N,)
        allowed &= is_audio[:, None] != is_audio[None, :]
    pos = label_consistency(labels, labels).bool() & allowed  # (N, N)
    cos = z @ z.T  # (N, N)
    if video_patches is not None and len(audio) and len(video):
        na, nv = len(audio), len(video)
        patches = F.normalize(video_patches.float(), dim=-1)  # (Nv, P, D)
        sims = torch.einsum("id,jpd->ijp", z[:na], patches)  # (Na, Nv, P)
        k = min(max(int(patch_k), 1), patches.shape[1])
        # k = 1 keeps amax (not topk(1)): the same values, and the gradient on ties of earlier runs, bit for bit
        best = sims.amax(dim=-1) if k == 1 else sims.topk(k, dim=-1).values.mean(dim=-1)  # (Na, Nv)
        cos[:na, na:na + nv] = best
        cos[na:na + nv, :na] = best.T
    sim = (cos / temperature).masked_fill(~allowed, _NEG)  # (N, N)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (N, N)
    n_pos = pos.sum(dim=1)  # (N,)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return _zero(audio, video, cls)
    row_loss = -(log_prob * pos).sum(dim=1) / n_pos.clamp(min=1)  # (N,): masked entries are finite, so 0 * x = 0
    return row_loss[has_pos].mean()


@in_float32
def patch_audio_similarity(patch_tokens: Tensor, audio_token: Tensor, normalize: bool = False) -> Tensor:
    """cos(patch_n, audio) of each frame's patches and its second's audio token: (B, N, D), (B, D) -> (B, N).

    With `normalize=True`, min-max normalised per frame, (s - min) / (max - min + 1e-5): the scale eq. 2's relative
    thresholds read (a frame whose similarities are all equal maps to 0 everywhere)."""
    s = F.cosine_similarity(patch_tokens.float(), audio_token.float()[:, None, :], dim=-1)  # (B, N)
    if normalize and s.numel() > 0:
        lo = s.amin(dim=1, keepdim=True)
        hi = s.amax(dim=1, keepdim=True)
        s = (s - lo) / (hi - lo + 1e-5)
    return s


def patch_labels_from_audio(patch_tokens: Tensor, audio_token: Tensor, high: float, low: float,
                            normalize: bool = False) -> Tensor:
    """CMPC patch labels (paper §3.2.2, eq. 2): threshold each patch's similarity to its second's audio token.

    s_n = cos(patch_n, audio); label 1 (sounding) if s_n >= high, 0 (not sounding) if s_n <= low, else 255
    (ignored). With `normalize=True` the thresholds are relative (`patch_audio_similarity`'s per-frame min-max
    scale), so `high` / `low` are fractions of that frame's similarity range (like ToCo's CAM thresholds); a frame
    whose similarities are all equal then maps to 0 everywhere (labelled non-sounding when low >= 0). Frames known
    to be silent should be set to 0 by the caller.

    Args:
        patch_tokens: (B, N, D) visual patch tokens of B frames.
        audio_token: (B, D) audio token of the same second.
        high: similarity at or above which a patch is sounding.
        low: similarity at or below which a patch is not sounding (low <= high).
        normalize: use per-frame min-max normalised similarities.

    Returns:
        (B, N) long labels in {0, 1, 255}.
    """
    if low > high:
        raise ValueError(f"low threshold {low} is above high threshold {high}")
    with torch.no_grad():
        s = patch_audio_similarity(patch_tokens, audio_token, normalize)  # (B, N)
        labels = torch.full_like(s, IGNORE, dtype=torch.long)
        labels[s >= high] = 1
        labels[s <= low] = 0
    return labels


@in_float32
def cmpc_loss(patch_tokens: Tensor, patch_labels: Tensor) -> Tensor:
    """Cross-Modal Patch token Contrast (paper eq. 2) in ToCo's PTC form (method-facts §2, §4).

    Within each frame, x = normalize(tokens) and cos = |x x^T|. A pair is positive when both tokens carry the same
    label (two non-sounding tokens are positive too, as in ToCo), negative when the labels differ, and ignored when
    either is 255 or on the diagonal. With pair counts over the whole batch:

        L = 0.5 * (1 - sum_pos cos / (N_pos + 1)) + 0.5 * sum_neg cos / (N_neg + 1).

    When the batch has no valid pair at all the loss is 0 (ToCo's formula would give a constant 0.5).

    Args:
        patch_tokens: (B, N, D) patch tokens of B frames.
        patch_labels: (B, N) long in {0, 1, 255}.
    """
    b, n = patch_labels.shape
    if b * n == 0:
        return _zero(patch_tokens)
    x = F.normalize(patch_tokens.float(), dim=-1)  # (B, N, D)
    cos = (x @ x.transpose(1, 2)).abs()  # (B, N, N)
    valid = patch_labels != IGNORE  # (B, N)
    pair_ok = valid[:, :, None] & valid[:, None, :]
    pair_ok &= ~torch.eye(n, dtype=torch.bool, device=x.device)  # (B, N, N)
    same = patch_labels[:, :, None] == patch_labels[:, None, :]
    pos = pair_ok & same
    neg = pair_ok & ~same
    n_pos, n_neg = pos.sum(), neg.sum()
    if int(n_pos + n_neg) == 0:
        return _zero(patch_tokens)
    pos_term = 1.0 - (cos * pos).sum() / (n_pos + 1)
    neg_term = (cos * neg).sum() / (n_neg + 1)
    return 0.5 * pos_term + 0.5 * neg_term


@in_float32
def cmcc_loss(global_cls: Tensor, crop_cls: Tensor, crop_positive: Tensor, temperature: float = 0.5,
              eps: float = 1e-4) -> Tensor:
    """Cross-Modal Class token Contrast (paper §3.2.2, eq. 3): InfoNCE between crop and global class tokens.

    With s_k = cos(g, c_k) / tau for the K crops of an image, P its positive crops (covering sounding regions) and
    N its negatives, the image's loss is

        (1 / |P|) * sum_{p in P} -log( exp(s_p) / (exp(s_p) + sum_{n in N} exp(s_n) + eps) ),

    computed with logsumexp. The batch loss is the mean over images with at least one positive (images without
    positives add nothing; 0 if no image has one). Cosine (not ToCo's raw dot product) keeps tau meaningful.

    Args:
        global_cls: (B, D) global class token, detached by the caller (pcas passes the student's own: no EMA
            teacher as in ToCo's CTC).
        crop_cls: (B, K, D) local crop class tokens.
        crop_positive: (B, K) bool.
        temperature: tau.
        eps: the small constant in the denominator.
    """
    b, k = crop_positive.shape
    if b * k == 0:
        return _zero(global_cls, crop_cls)
    s = F.cosine_similarity(crop_cls.float(), global_cls.float()[:, None, :], dim=-1) / temperature  # (B, K)
    positive = crop_positive.bool()
    s_neg = s.masked_fill(positive, _NEG)  # (B, K): only negatives survive
    log_eps = torch.full_like(s[:, :1], float(torch.log(torch.tensor(eps))))  # (B, 1)
    # log(exp(s_p) + sum_n exp(s_n) + eps) for every crop p: (B, K)
    neg_and_eps = torch.cat([s_neg, log_eps], dim=1)  # (B, K+1)
    log_denom = torch.logaddexp(s, torch.logsumexp(neg_and_eps, dim=1, keepdim=True))
    nll = (log_denom - s) * positive  # (B, K), zero at negatives
    n_pos = positive.sum(dim=1)  # (B,)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return _zero(global_cls, crop_cls)
    per_image = nll.sum(dim=1) / n_pos.clamp(min=1)  # (B,)
    return per_image[has_pos].mean()


def crop_labels_from_patch_labels(patch_labels: Tensor, boxes: Tensor, threshold: float = 0.1,
                                  ignored_score: float = 0.5) -> Tensor:
    """Which crops cover sounding regions: positive when the crop's sounding share exceeds `threshold`.

    The share is area-weighted over the patch cells the box overlaps, each cell scored 1 if sounding (label 1),
    `ignored_score` if ignored (255) and 0 if not sounding. With 0.5 this mirrors ToCo's ROI rule (bg 0, uncertain 1,
    fg 2; negative when the mean ROI <= 0.2, i.e. share <= 0.1; method-facts §3); 0 reads the paper's "crops
    containing sounding regions are positives, others negatives" literally. A box of zero area is negative.

    Args:
        patch_labels: (B, h, w) long in {0, 1, 255}.
        boxes: (B, K, 4) float boxes (x0, y0, x1, y1) in normalised image coordinates [0, 1].
        threshold: minimum share for a positive crop.
        ignored_score: how much an ignored (uncertain) cell counts as sounding.

    Returns:
        (B, K) bool.
    """
    b, h, w = patch_labels.shape
    score = (patch_labels == 1).float() + ignored_score * (patch_labels == IGNORE).float()  # (B, h, w)
    boxes = boxes.float().clamp(0.0, 1.0)

    def overlap(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
        """(B, K) box edges -> (B, K, cells) length of overlap with each unit cell, in cell units."""
        edges = torch.arange(cells, device=boxes.device, dtype=torch.float32)
        lo_c, hi_c = lo[..., None] * cells, hi[..., None] * cells
        return (torch.minimum(hi_c, edges + 1) - torch.maximum(lo_c, edges)).clamp(min=0.0)

    wx = overlap(boxes[..., 0], boxes[..., 2], w)  # (B, K, w)
    wy = overlap(boxes[..., 1], boxes[..., 3], h)  # (B, K, h)
    covered = torch.einsum("bkh,bkw,bhw->bk", wy, wx, score)  # (B, K)
    area = wy.sum(dim=-1) * wx.sum(dim=-1)  # (B, K)
    share = covered / area.clamp(min=1e-8)
    return (share > threshold) & (area > 0)


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """Pixel cross-entropy averaged over non-ignored pixels; 0 when all are ignored (ToCo NaN pitfall, #3/#8).

    Args:
        logits: (B, K, H', W') scores; resized bilinearly to the target size when it differs.
        target: (B, H, W) long class indices or `ignore_index`.
    """
    if target.numel() == 0:
        return _zero(logits)
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    n_valid = (target != ignore_index).sum()
    if int(n_valid) == 0:
        return _zero(logits)
    total = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="sum")
    return total / n_valid
