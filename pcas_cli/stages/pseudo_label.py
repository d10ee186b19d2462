"""`pcas pseudo-label`: audio-guided class activation maps -> per-frame sounding-object masks (paper §3, Fig. 1).

For frame t of a clip:
1. Which classes sound now: the frozen listener's per-second probabilities p_t (TVP audio encoder), by default
   confirmed by the audio-only listener (geometric mean of the two, `_common.listen`). On the train split they may
   be intersected with the video labels; on val/test only predictions are used, never ground truth.
   (The visual-only CAM baseline uses the visual classifier's probabilities instead and no audio.)
2. Class maps: multi-scale + flip CAMs of the visual classifier (ToCo), per-class min-max normalised, absent classes
   zeroed, then sharpened by the audio-patch similarity cos(P_v(patch), P_a(a_t)) learned by CMC/CMPC:
   cam_c * sim^alpha (alpha = 0: plain CAMs; alpha is chosen on val with the thresholds, see below). The
   "similarity" mode (an EZ-VSL-like baseline) uses sim * p_t[c] as the class maps instead.
3. Background where every class map is <= the background threshold; semantic mask = argmax. Soft scores are the
   softmax over [threshold, class maps] (ToCo's CRF unary); binary data sets use the softmax over
   [threshold, strongest class map], which agrees with the binary mask.

Step 1 may also weigh in the visual classifier's clip-level evidence (`visual_gates`): presence = p_t^(1 - beta) *
v^beta with v = the classifier's highest probability for the class over the clip's frames (predictions only). The
listener then only has to tell which of the digits / objects it could be; beta = 0 is the listener alone.

Four settings are chosen on val, jointly (a grid sweep scored against the val masks, the only use of ground truth
here): the presence threshold (a class sounds in frame t when its probability exceeds it), the background threshold,
the similarity exponent alpha and the visual gate beta. All are recorded in val's artifact; other splits read them
from there, so test never tunes on test. The CAM baseline gets the same sweep over its visual presence
probabilities, so the comparison is fair. The background threshold chosen here is the best for these masks; the
"+ CRF" rows re-choose it for the CRF's output (`pcas crf`, jointly with the kernel, on val: the soft scores at
another threshold follow exactly from these). (`oracle_presence`, a diagnostic, replaces step 1 by the split's
ground-truth sounding classes: how far a perfect listener would take the same maps.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pcas_cli.artifacts import ArtifactReader, read_predictions, require_masks
from pcas_cli.cam import cam_to_scores, mask_absent, multiscale_cam, normalize_cam, scores_to_probs
from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError
from pcas_cli.metrics import BinaryMIoU, SemanticScores
from pcas_cli.provenance import check_made_alike, make_provenance
from pcas_cli.stages._common import (feature_key, frame_classes_from_masks, frames_to_tensor, listen,
                                     listener_names, open_features, resolve_device, run_paths, stage_config,
                                     visual_from_checkpoint)
from pcas_cli.stages._predict import write_predictions


@dataclass(frozen=True)
class PseudoLabelConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder
    split: str = "test"  # split to label: train | val | test (val first: it chooses the threshold)
    weights: str = "refine"  # visual weights: ckpt/<weights>.pt (refine, align, or visual for the CAM baseline)
    listener: str = "tvp"  # ckpt/<listener>.pt says which classes sound; "" = visual-only (CAM baseline)
    co_listener: str = "ast"  # presence = geometric mean with this listener's probabilities (ckpt/<co_listener>.pt;
    # the audio-only listener confirms what TVP hears, see `listen`); "" = the listener alone
    mode: Literal["cam", "similarity"] = "cam"  # class maps from CAMs, or from audio-patch similarity (baseline)
    out: str = "pseudo"  # output folder under the run: <out>/<split>.h5
    presence_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # swept on val: class c counts in frame t
    # when its probability (audio, or visual for the CAM baseline) exceeds the threshold
    train_use_labels: bool = True  # on train, also require the class to be in the clip's video labels
    sim_alphas: tuple[float, ...] = (0.0, 0.5, 1.0)  # swept on val: exponent of the similarity sharpening
    visual_gates: tuple[float, ...] = (0.0,)  # swept on val: weight beta of the visual classifier's clip-level
    # class probability in the presence, p_t^(1 - beta) * v^beta (0 = the listener alone; with a listener only)
    scales: tuple[float, ...] = (1.0, 0.5, 1.5)  # multi-scale CAM (ToCo)
    flip: bool = True  # merge each scale with its horizontal flip
    bg_thresholds: tuple[float, ...] = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)  # swept on val
    oracle_presence: bool = False  # DIAGNOSTIC ONLY: which classes sound in frame t comes from this split's
    # ground-truth masks instead of the listener (the listener still gives the audio tokens for the similarity). Its
    # score bounds what a better listener could give (report: a diagnostic row of Table 2, never a method's result)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class FrameMaps:
    """Class maps of one clip before thresholding."""

    maps: Tensor  # (T, C, H, W) in [0, 1], before any class is removed (and before similarity sharpening)
    presence: Tensor  # (T, C) probabilities that class c sounds (or is visible, visual-only) in frame t
    allowed: Tensor  # (T, C) bool: valid frame and (train only, optionally) class in the video labels
    similarity: Tensor | None = None  # (T, H, W) in [0, 1], audio-patch similarity (CAM mode with a listener)
    clip_visual: Tensor | None = None  # (1, C) the visual classifier's highest probability per class in the clip

    def gated(self, beta: float) -> Tensor:
        """(T, C) presence weighted by the clip-level visual evidence, p^(1 - beta) * v^beta (unchanged at 0)."""
        if self.clip_visual is None or beta == 0:
            return self.presence
        return self.presence.clamp_min(0) ** (1 - beta) * self.clip_visual ** beta

    def present(self, threshold: float, beta: float = 0.0) -> Tensor:
        """(T, C) float {0, 1}: classes kept in each frame at this presence threshold (and visual gate)."""
        return ((self.gated(beta) > threshold) & self.allowed).float()

    def sharpened(self, alpha: float) -> Tensor:
        """(T, C, H, W) class maps times similarity^alpha (unchanged when alpha = 0 or there is no similarity)."""
        if self.similarity is None or alpha == 0:
            return self.maps
        return self.maps * self.similarity[:, None].clamp(min=0) ** alpha


class MapMaker:
    """Computes class maps clip by clip for one split (streams; memory does not grow with the split)."""

    def __init__(self, cfg: PseudoLabelConfig, features: ArtifactReader, device: torch.device) -> None:
        self.cfg, self.features, self.device = cfg, features, device
        if cfg.oracle_presence and cfg.split == "train":
            raise PcasError("oracle_presence is a val / test diagnostic; train pseudo-labels come from the listener")
        if cfg.oracle_presence:
            require_masks(features, "oracle_presence has no true sounding classes to read")
        ckpt_dir = run_paths(cfg.run)["ckpt"]
        self.model, wck = visual_from_checkpoint(ckpt_dir / f"{cfg.weights}.pt")
        self.model = self.model.to(device).eval()
        self.inputs = {feature_key(cfg.split): features.artifact_id, f"ckpt/{cfg.weights}.pt": wck["artifact_id"]}
        self.cache = None
        if cfg.listener:
            self.cache, ids = listen(ckpt_dir, listener_names(cfg.listener, cfg.co_listener), features, device,
                                     cfg.split)
            self.inputs.update(ids)
        if cfg.mode == "similarity" and not (self.cache is not None and self.model.has_projections):
            raise PcasError("similarity mode needs a listener and weights with projection heads (align / refine)")
        # CAM mode with a listener and projection heads can sharpen CAMs by the audio-patch similarity
        self.sharpens = cfg.mode == "cam" and self.cache is not None and self.model.has_projections
        # a listener's presence can be gated by the visual classifier (not the visual-only baseline's, not the oracle)
        self.gates = self.cache is not None and not cfg.oracle_presence

    @torch.no_grad()
    def clip_maps(self, i: int) -> FrameMaps:
        cfg = self.cfg
        # a split's video labels and masks are read only where used: train's labels (train_use_labels) and the
        # oracle diagnostic's ground truth; val / test predictions never see them
        uses_labels = cfg.oracle_presence or (cfg.split == "train" and cfg.train_use_labels)
        truth_fields = ("masks", "mask_valid") if cfg.oracle_presence else ()
        clip = self.features.clip(i, ("frames", "frame_valid", *(("labels",) if uses_labels else ()), *truth_fields))
        images = frames_to_tensor(clip["frames"], self.device)  # (T, 3, H, W)
        visual = self.model.visual
        out = visual(images)
        if cfg.oracle_presence:
            truth = frame_classes_from_masks(clip["masks"], clip["mask_valid"], clip["labels"], self.features.task)
            presence = torch.from_numpy(truth).float().to(self.device)  # (T, C) {0, 1}
        elif self.cache is not None:
            presence = self.cache.probs[i].to(self.device)  # (T, C)
        else:
            presence = torch.sigmoid(out.logits)  # visual-only: classes visible in the frame
        allowed = torch.from_numpy(clip["frame_valid"]).bool().to(self.device)[:, None].expand_as(presence)
        clip_visual = None
        if self.gates:
            # the classifier's evidence over the clip's real frames (padding frames are zeros, not evidence)
            clip_visual = torch.sigmoid(out.logits).masked_fill(~allowed, 0).amax(dim=0, keepdim=True)  # (1, C)
        if cfg.split == "train" and cfg.train_use_labels:
            allowed = allowed & torch.from_numpy(clip["labels"]).bool().to(self.device)[None]
        sim = self.similarity(out, i, images.shape[-2:]) if self.sharpens or cfg.mode == "similarity" else None
        if cfg.mode == "similarity":
            return FrameMaps(sim[:, None] * presence[:, :, None, None], presence, allowed)  # (T, C, H, W)
        cams = multiscale_cam(lambda x: visual.cam(*_tokens(visual, x)), images, cfg.scales, cfg.flip)
        return FrameMaps(normalize_cam(cams), presence, allowed, similarity=sim, clip_visual=clip_visual)

    def similarity(self, out: Any, i: int, size: tuple[int, int]) -> Tensor:
        """(T, H, W) per-frame min-max normalised cos(P_v(patch), P_a(a_t)), upsampled to the frame."""
        z_patch = self.model.proj_patch(out.patch_tokens)  # (T, N, P)
        z_audio = self.model.proj_audio(self.cache.tokens[i].to(self.device))  # (T, P)
        s = torch.einsum("tnp,tp->tn", z_patch, z_audio)  # unit vectors: cosine
        h, w = out.grid
        s = s.view(-1, 1, h, w)
        lo, hi = s.amin(dim=(2, 3), keepdim=True), s.amax(dim=(2, 3), keepdim=True)
        s = (s - lo) / (hi - lo + 1e-5)
        return F.interpolate(s, size=size, mode="bilinear", align_corners=False)[:, 0]


def _tokens(visual: Any, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    out = visual(x)
    return out.patch_tokens, out.grid


@dataclass(frozen=True)
class Thresholds:
    presence: float  # class c counts in frame t when its probability exceeds this
    background: float  # background where every kept class map is <= this
    sim_alpha: float = 0.0  # similarity sharpening exponent
    visual_gate: float = 0.0  # beta of FrameMaps.gated

    @property
    def key(self) -> str:
        return f"{self.presence}/{self.background}/{self.sim_alpha}/{self.visual_gate}"


def class_scores(maps: FrameMaps, th: Thresholds) -> tuple[Tensor, Tensor]:
    """Kept classes (T, C) {0, 1} and scores (T, C + 1, H, W) = [background threshold, kept class maps]."""
    present = maps.present(th.presence, th.visual_gate)  # (T, C)
    return present, cam_to_scores(mask_absent(maps.sharpened(th.sim_alpha), present), th.background)


def masks_from_scores(scores: Tensor, present: Tensor, task: str) -> np.ndarray:
    """(T, H, W) uint8: argmax over background and the kept classes; ties -> background (the first channel)."""
    keep = torch.cat([torch.ones_like(present[:, :1]), present], 1).bool()  # (T, C + 1)
    masks = scores.masked_fill(~keep[:, :, None, None], -1.0).argmax(dim=1)
    if task == "binary":
        masks = masks > 0
    return masks.cpu().numpy().astype(np.uint8)


def masks_per_background(maps: FrameMaps, th: Thresholds, backgrounds: tuple[float, ...],
                         task: str) -> Iterator[tuple[float, np.ndarray]]:
    """(background threshold, (T, H, W) masks) for each background threshold, with th's other settings: the same
    masks as `masks_from_scores(*class_scores(...))` (background unless the strongest kept class map beats the
    threshold; ties go to background and then to the first class), but the kept maps and their argmax are computed
    once for all background thresholds, which makes the val sweep several times faster."""
    present = maps.present(th.presence, th.visual_gate)  # (T, C)
    kept = maps.sharpened(th.sim_alpha).masked_fill(present[:, :, None, None] == 0, -1.0)  # (T, C, H, W)
    best = kept.argmax(dim=1)  # (T, H, W) first strongest class
    top = kept.amax(dim=1)  # (T, H, W)
    for background in backgrounds:
        masks = torch.where(top > background, best + 1, 0)
        if task == "binary":
            masks = masks > 0
        yield background, masks.cpu().numpy().astype(np.uint8)


def to_prediction(maps: FrameMaps, th: Thresholds, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, K, H, W) float16 soft scores and (T, H, W) uint8 masks from class maps (see module docstring, step 3)."""
    present, scores = class_scores(maps, th)
    if task == "binary":
        # Foreground score = the strongest kept class map, so the soft scores agree with the mask (foreground iff
        # it beats the threshold). Summing class probabilities instead (1 - p_bg) would call every background pixel
        # of a multi-source frame foreground: with 3 kept classes near 0 there, p_bg = e^t / (e^t + 3) < 0.5.
        fg = scores[:, 1:].masked_fill(present[:, :, None, None] == 0, float("-inf")).amax(dim=1, keepdim=True)
        scores = torch.cat([scores[:, :1], fg], dim=1)  # (T, 2, H, W); -inf where no class is kept
        present = present.amax(dim=1, keepdim=True)  # (T, 1): does anything sound
    probs = scores_to_probs(scores.clamp(min=-1.0), class_presence=present)
    return probs.cpu().numpy().astype(np.float16), masks_from_scores(scores, present, "semantic")


def sweep_thresholds(maker: MapMaker, cfg: PseudoLabelConfig) -> tuple[Thresholds, dict[str, float]]:
    """Choose (presence, background, alpha, beta) with the best val mIoU (the task's official metric) on a grid;
    returns the choice and every grid point's score ("presence/background/alpha/beta" -> mIoU)."""
    feats = maker.features
    alphas = cfg.sim_alphas if maker.sharpens else (0.0,)
    gates = cfg.visual_gates if maker.gates else (0.0,)
    grid = [Thresholds(p, b, a, g) for p in cfg.presence_thresholds for b in cfg.bg_thresholds for a in alphas
            for g in gates]
    if feats.task == "semantic":
        accs = {th: SemanticScores(len(feats.classes) + 1) for th in grid}
    else:
        accs = {th: BinaryMIoU() for th in grid}
    # one pass per (presence, alpha, beta) covers every background threshold (masks_per_background)
    heads = [th for th in grid if th.background == cfg.bg_thresholds[0]]
    with progress(transient=True) as bar:
        task = bar.add_task("choosing thresholds on val", total=len(feats), info="")
        for i in range(len(feats)):
            maps = maker.clip_maps(i)
            gt = feats.clip(i, ("masks", "mask_valid"))
            keep = gt["mask_valid"]
            for head in heads:
                for background, masks in masks_per_background(maps, head, cfg.bg_thresholds, feats.task):
                    accs[replace(head, background=background)].update(masks[keep], gt["masks"][keep])
            bar.advance(task)
    scores = {th: float(acc.result()["miou"]) for th, acc in accs.items()}
    # Ties (flat regions of the grid) go to thresholds nearest 0.5, the conventional default, then to less sharpening
    # and less visual gating.
    best = max(grid, key=lambda th: (scores[th], -abs(th.presence - 0.5) - abs(th.background - 0.5), -th.sim_alpha,
                                     -th.visual_gate))
    return best, {th.key: v for th, v in scores.items()}


def thresholds_from_val(cfg: PseudoLabelConfig, inputs: dict[str, str]) -> tuple[Thresholds, str]:
    """The thresholds val chose, refused unless val was labelled alike (same settings and weights as this split)."""
    val_path = Path(cfg.run) / cfg.out / "val.h5"
    if not val_path.exists():
        raise PcasError(f"{val_path}: not found; run `pcas pseudo-label --split val` first (it chooses the "
                        "thresholds)")
    val = read_predictions(val_path)
    if "sim_alpha" not in val.meta:
        raise PcasError(f"{val_path}: made by an older pcas without the thresholds chosen on val; rerun "
                        "`pcas pseudo-label --split val`")
    check_made_alike(Path(cfg.run) / cfg.out / f"{cfg.split}.h5", val_path,
                     {"stage": "pseudo-label", "config": stage_config(cfg), "inputs": inputs}, val.provenance)
    m = val.meta
    # visual_gate: absent from artifacts made before it existed, which had none
    th = Thresholds(float(m["presence_threshold"]), float(m["bg_threshold"]), float(m["sim_alpha"]),
                    float(m.get("visual_gate", 0.0)))
    return th, val.artifact_id


def iter_rows(maker: MapMaker, th: Thresholds) -> Iterator[dict[str, Any]]:
    feats = maker.features
    for i in range(len(feats)):
        maps = maker.clip_maps(i)
        scores, masks = to_prediction(maps, th, feats.task)
        yield {"clip_id": feats.read("clip_id", i), "scores": scores, "masks": masks,
               "frame_classes": maps.gated(th.visual_gate).cpu().numpy().astype(np.float32)}


def run(cfg: PseudoLabelConfig) -> Path:
    device = resolve_device(cfg.device)
    feats = open_features(cfg.run, cfg.split)
    maker = MapMaker(cfg, feats, device)
    inputs = dict(maker.inputs)
    sweep: dict[str, float] = {}
    if cfg.split == "val":
        th, sweep = sweep_thresholds(maker, cfg)
        CONSOLE.print(f"chosen on val: presence threshold {th.presence}, background threshold {th.background}, "
                      f"similarity exponent {th.sim_alpha}, visual gate {th.visual_gate} "
                      f"(val mIoU {sweep[th.key]:.4f})")
    else:
        th, val_id = thresholds_from_val(cfg, inputs)
        inputs[f"{cfg.out}/val.h5"] = val_id
    meta = {"presence_threshold": th.presence, "bg_threshold": th.background, "sim_alpha": th.sim_alpha,
            "visual_gate": th.visual_gate,
            "threshold_sweep_val_miou": sweep, "method": cfg.out}
    prov = make_provenance("pseudo-label", stage_config(cfg), None, inputs)
    return write_predictions(Path(cfg.run) / cfg.out / f"{cfg.split}.h5", feats, iter_rows(maker, th), meta, prov,
                             f"{cfg.out} {cfg.split}")
