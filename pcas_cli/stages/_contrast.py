"""The contrastive training task behind `pcas align` (CMC) and `pcas refine` (CMPC + CMCC), paper §3.2.

One step, for a batch of frames x_t with their clip's video labels y and the frozen listener's a_t, p_t:
- cls:  ToCo multi-label loss of the visual classifier (keeps the CAM weights trained).
- CMC (eq. 1): supervised contrast between z_audio = P_a(a_t), z_video = maxpool_n P_v(patch_n), z_cls = P_c(cls);
  audio labels = y * [p_t > audio_threshold] (which of the video's classes sound *now*), visual labels = y. An
  audio-video pair is scored by the video's best-matching patch, max_n cos(z_audio, P_v(patch_n)) (cmc_patch_match).
- CMPC (eq. 2): patch labels from cos(P_v(patch_n), z_audio) (high / low bands, per-frame min-max normalised;
  silent seconds ignored), then ToCo's patch token contrast on the encoder's final patch tokens.
- CMCC (eq. 3): K random local crops per frame; a crop is positive when it covers sounding patches (by the CMPC
  labels); InfoNCE between crop class tokens and the (detached) global class token, in P_c's space.
Each term can be switched off (all three off: the classification loss alone, Table 4's control); every term is
logged separately.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE
from pcas_cli.errors import PcasError
from pcas_cli.losses import (IGNORE, cmc_loss, cmcc_loss, cmpc_loss, crop_labels_from_patch_labels, multilabel_loss,
                             patch_labels_from_audio)
from pcas_cli.provenance import make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (AudioCache, PCASModel, ProjectionConfig, check_fresh, feature_key, features_path,
                                     listen, listener_names, open_features, resolve_device, run_paths, second_targets,
                                     stage_config, visual_from_checkpoint)
from pcas_cli.training.data import AugmentConfig, FrameDataset
from pcas_cli.training.loop import OptimConfig, Resume, TrainTask, fit


@dataclass(frozen=True)
class LossWeights:
    cls: float = 1.0  # visual multi-label classification (always on: CAMs are read from this classifier)
    cmc: float = 1.0  # Cross-Modal Contrast, eq. 1
    cmpc: float = 0.2  # Cross-Modal Patch token Contrast, eq. 2 (ToCo's PTC weight)
    cmcc: float = 0.5  # Cross-Modal Class token Contrast, eq. 3 (ToCo's CTC weight)


@dataclass(frozen=True)
class CMPCParams:
    high: float = 0.7  # normalised audio-patch similarity at or above which a patch counts as sounding
    low: float = 0.35  # at or below which it counts as not sounding; between: ignored
    normalize: bool = True  # thresholds relative to each frame's similarity range (robust to the scale of cosines)


@dataclass(frozen=True)
class CMCCParams:
    crops: int = 4  # local crops per frame (ToCo: 8 per image)
    crop_fraction: float = 0.4  # crop side as a fraction of the frame side (ToCo: 96 of 448 px ~ 0.21)
    crop_size: int = 48  # crops are resized to this many pixels
    positive_share: float = 0.1  # a crop is positive when its sounding share (ToCo ROI rule) exceeds this
    # How much an ignored CMPC cell counts as sounding in that share: 0 = only sounding cells make a positive crop (the
    # paper's wording, "crops containing sounding regions are positives"); 0.5 = ToCo's ROI rule, under which few
    # crops are negative and eq. 3's InfoNCE, without negatives, gives ~0. The default since session 28 follows the
    # paper's wording; val did not separate the two rules over four seeds (within +-0.4 mIoU), and the test numbers in
    # results/table4-study.md sections 8-10 are a post hoc look, not what chose it.
    ignored_score: float = 0.0
    temperature: float = 0.5  # tau of eq. 3 (ToCo VOC: 0.5)
    eps: float = 1e-4  # epsilon of eq. 3


@dataclass(frozen=True)
class ContrastConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder
    name: str = ""  # output stem in ckpt/ ("" = the stage name: align / refine)
    init: str = ""  # weights to start from: ckpt/<init>.pt, e.g. visual, align, align-nocmc; "" = stage default
    listener: str = "tvp"  # which listener checkpoint gives a_t, p_t (ckpt/<listener>.pt)
    co_listener: str = "ast"  # p_t = geometric mean with this listener's probabilities (ckpt/<co_listener>.pt; the
    # audio-only one does not report visible objects in silent seconds as TVP does); "" = the listener alone
    cmc: bool = True  # use CMC (eq. 1)
    cmpc: bool = False  # use CMPC (eq. 2)
    cmcc: bool = False  # use CMCC (eq. 3)
    cmc_temperature: float = 0.1  # tau of eq. 1
    cmc_patch_match: bool = True  # CMC scores an audio token against a video by its best-matching patch (EZ-VSL's
    # multiple-instance matching), which trains the patch-level similarity CMPC labels from; False: against the
    # max-pooled video token (measured: README, "Which patches sound")
    cmc_patch_share: float = 0.0  # with cmc_patch_match: the pair's score is the mean cosine of the best
    # round(share x patches) patches (at least 1; 0 = the best patch alone, EZ-VSL's max), so that about as many
    # patches as a sounding object covers are trained to resemble its audio (measured worse: results/table4-study.md)
    cmc_cross_modal_only: bool = False  # CMC contrasts audio tokens with visual (video, class) tokens only; False:
    # one supervised contrast over all three kinds, same-kind pairs included (measured: far better CMPC labels, not
    # better masks; results/table4-study.md)
    cmc_encoder_grad: float = 1.0  # CMC's gradient into the visual encoder is scaled by this; 0: CMC trains only the
    # projection heads, i.e. the audio-patch similarity that CMPC / CMCC label from, and the encoder learns from the
    # classification loss, CMPC and CMCC (z_patch / z_video / z_cls feed only CMC; CMCC's crops are not scaled)
    # DIAGNOSTIC, never a result (it reads the train split's masks and the generator's visible-object maps): CMPC /
    # CMCC patch labels from the ground truth instead of eq. 2, to ask which labels CMPC would want (results/
    # table4-study.md section 11). "" = eq. 2 (the method); see ORACLE_PATCH_LABELS.
    oracle_patch_labels: str = ""
    audio_threshold: float = 0.5  # a class sounds in second t when the listener's probability exceeds this
    threshold_on_val: bool = False  # choose audio_threshold among `threshold_candidates` instead: the one whose heard
    # (frame, class) pairs best match the val masks' sounding classes (F1; val is scored, never trained on). A weak
    # listener's probabilities are compressed, and a fixed 0.5 then silently switches CMC / CMPC / CMCC off
    threshold_candidates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    weights: LossWeights = field(default_factory=LossWeights)  # loss weights
    cmpc_params: CMPCParams = field(default_factory=CMPCParams)  # CMPC thresholds
    cmcc_params: CMCCParams = field(default_factory=CMCCParams)  # CMCC crops
    proj: ProjectionConfig = field(default_factory=ProjectionConfig)  # shared-space projection heads
    visual_lr_scale: float = 1.0  # the visual encoder and its classifier learn at optim.lr x this, the projection
    # heads at optim.lr (the paper sets separate module learning rates, §4.1): a pretrained or already trained
    # encoder can move slowly while the new heads catch up
    # lr 5e-5, chosen on val (AVSS, full PCAS row): 52.1 val mIoU vs 48.9 at 3e-4; more weak-label training of the
    # Looking encoder blurs its CAMs (README, "What these numbers say")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=5e-5, weight_decay=0.05,
                                                                   epochs=3, warmup_epochs=0.5, batch_size=32,
                                                                   clip_grad_norm=1.0))  # optimisation
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.6, 1.0), hflip=0.5))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: Resume = False  # continue an interrupted run: True, False or "auto" (training.loop.Resume)


# oracle_patch_labels -> the label of a patch by the region covering most of it (background, silent object,
# sounding object); None = ignored. A frame in which nothing sounds is ignored where the labels name sounding
# patches, as eq. 2's labels ignore seconds the listener hears as silent.
ORACLE_PATCH_LABELS = {
    "sounding": (0, 0, 1),  # what eq. 2 aims at: sounding objects against everything else
    "sounding-background": (0, None, 1),  # the same with silent objects left out
    "objects": (0, 1, 1),  # every visible object against the background, sounding or not
}


def patch_labels_from_regions(region: Tensor, valid: Tensor, grid: tuple[int, int], kind: str) -> Tensor:
    """Oracle CMPC labels (diagnostic): (B, H, W) regions in {0 background, 1 silent object, 2 sounding object} and
    (B,) frame validity -> (B, h*w) labels in {0, 1, IGNORE}, each patch labelled by its majority region."""
    shares = F.adaptive_avg_pool2d(F.one_hot(region.long(), 3).permute(0, 3, 1, 2).float(), grid)  # (B, 3, h, w)
    majority = shares.argmax(dim=1).flatten(1)  # (B, N)
    table = torch.tensor([IGNORE if v is None else v for v in ORACLE_PATCH_LABELS[kind]], device=region.device)
    labels = table[majority]
    if ORACLE_PATCH_LABELS[kind][2] != ORACLE_PATCH_LABELS[kind][1]:  # labels that single out sounding patches
        valid = valid & (region == 2).flatten(1).any(dim=1)
    labels[~valid] = IGNORE
    return labels


def random_boxes(b: int, k: int, fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, K, 4) square boxes (x0, y0, x1, y1) of side `fraction` in normalised coordinates, uniformly placed."""
    origin = torch.rand(b, k, 2, generator=generator) * (1.0 - fraction)
    return torch.cat([origin, origin + fraction], dim=-1)


def batch_generator(seed: int, clip: Tensor, frame: Tensor) -> torch.Generator:
    """A generator of its own for one batch's CMCC crops, seeded by the run's seed and the batch's frames.

    Drawing the crops from the global RNG would shift every later augmentation draw (made from it in the main
    process) whenever CMCC is on, so Table 4's rows with and without CMCC would also see different augmented frames.
    """
    key = np.concatenate([[seed], clip.numpy(), frame.numpy()]).astype(np.int64)
    return torch.Generator().manual_seed(zlib.crc32(key.tobytes()))


def cut_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """(B, 3, H, W), (B, K, 4) normalised boxes -> (B, K, 3, size, size) bilinear crops (roi_align)."""
    b, _, h, w = images.shape
    k = boxes.shape[1]
    scale = torch.tensor([w, h, w, h], dtype=images.dtype, device=images.device)
    rois = [bx.to(images) * scale for bx in boxes]  # per image (K, 4) in pixels
    crops = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops.view(b, k, *crops.shape[1:])


class ContrastTask(TrainTask):
    find_unused_parameters = True  # with CMC off the projection heads get no gradient

    def __init__(self, cfg: ContrastConfig, model: PCASModel, cache: AudioCache) -> None:
        self.cfg = cfg
        self.model = model
        self.cache = cache

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        visual = [p for p in model.visual.parameters() if p.requires_grad]
        heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("visual.")]
        groups = [{"params": visual, "lr": self.cfg.optim.lr * self.cfg.visual_lr_scale}]
        return groups + ([{"params": heads}] if heads else [])

    def train_dataset(self) -> FrameDataset:
        return FrameDataset(features_path(self.cfg.run, "train"), fields=("frames", "labels"),
                            augment=self.cfg.augment, oracle_regions=bool(self.cfg.oracle_patch_labels))

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        cfg = self.cfg
        images, labels = batch["image"], batch["labels"]  # (B, 3, H, W), (B, C)
        clip, t = batch["clip_index"].cpu().long(), batch["frame_index"].cpu().long()
        a_t = self.cache.tokens[clip, t].to(images)  # (B, Da)
        sounding = heard_classes(self.cache.probs[clip, t].to(images), labels, cfg.audio_threshold).to(images)
        crops = boxes = None
        if cfg.cmcc:
            boxes = random_boxes(len(images), cfg.cmcc_params.crops, cfg.cmcc_params.crop_fraction,
                                 batch_generator(cfg.optim.seed, clip, t))
            crops = cut_crops(images, boxes, cfg.cmcc_params.crop_size)
        out = model(images, audio_tokens=a_t, crops=crops, head_grad_scale=cfg.cmc_encoder_grad)
        v = out["visual"]
        terms = {"cls": cfg.weights.cls * multilabel_loss(v.logits, labels)}
        if cfg.cmc:
            terms["cmc"] = cfg.weights.cmc * cmc_loss(out["z_audio"], out["z_video"], out["z_cls"], sounding, labels,
                                                      labels, temperature=cfg.cmc_temperature,
                                                      cross_modal_only=cfg.cmc_cross_modal_only,
                                                      video_patches=out["z_patch"] if cfg.cmc_patch_match else None,
                                                      patch_k=round(cfg.cmc_patch_share * out["z_patch"].shape[1]))
        if cfg.cmpc or cfg.cmcc:  # (B, N) patch labels: eq. 2's, or the diagnostic's from the ground truth
            if cfg.oracle_patch_labels:
                patch_labels = patch_labels_from_regions(batch["region"], batch["region_valid"], v.grid,
                                                         cfg.oracle_patch_labels)
            else:
                patch_labels = frame_patch_labels(out["z_patch"].detach(), out["z_audio"].detach(),
                                                  sounding.any(dim=1), cfg.cmpc_params)
        if cfg.cmpc:
            terms["cmpc"] = cfg.weights.cmpc * cmpc_loss(v.patch_tokens, patch_labels)
        if cfg.cmcc:
            h, w = v.grid
            positive = crop_labels_from_patch_labels(patch_labels.view(-1, h, w), boxes.to(images.device),
                                                     cfg.cmcc_params.positive_share, cfg.cmcc_params.ignored_score)
            terms["cmcc"] = cfg.weights.cmcc * cmcc_loss(out["z_cls"].detach(), out["z_crop"], positive,
                                                         cfg.cmcc_params.temperature, cfg.cmcc_params.eps)
        return terms


def frame_patch_labels(z_patch: Tensor, z_audio: Tensor, heard: Tensor, params: CMPCParams) -> Tensor:
    """CMPC labels (eq. 2) (B, N) in {0, 1, IGNORE}; frames whose second is silent (heard (B,) False) carry no audio
    evidence and are ignored. What refine trains on, and what `pcas diagnose` scores."""
    labels = patch_labels_from_audio(z_patch, z_audio, params.high, params.low, normalize=params.normalize)
    labels[~heard] = IGNORE
    return labels


def heard_classes(probs: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """The classes align / refine treat as sounding now: in the video labels and heard by the listener (p_t >
    threshold). probs (..., C), labels broadcastable to it -> bool (..., C)."""
    return (probs > threshold) & labels.bool()


def heard_counts(probs: Tensor, labels: Tensor, targets: np.ndarray, has: np.ndarray,
                 threshold: float) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of the heard (frame, class) pairs against the sounding
    classes of the frames with a mask. probs (N, T, C), labels (N, 1, C), targets (N, T, C) bool, has (N, T) bool."""
    heard = heard_classes(probs, labels, threshold).numpy()
    tp, fp = int((heard & targets)[has].sum()), int((heard & ~targets)[has].sum())
    return tp, fp, int((~heard & targets)[has].sum())


def choose_threshold(cache: AudioCache, features: ArtifactReader,
                     candidates: tuple[float, ...]) -> tuple[float, dict[str, float]]:
    """The candidate threshold with the best F1 of heard (frame, class) pairs on this split (val: scoring only), and
    every candidate's F1. Ties go to the candidate nearest 0.5."""
    if not candidates:
        raise PcasError("threshold_on_val: threshold_candidates is empty")
    targets, has = second_targets(features)
    labels = torch.from_numpy(np.asarray(features.read("labels", slice(None))))[:, None, :]  # (N, 1, C)
    f1 = {}
    for t in candidates:
        tp, fp, fn = heard_counts(cache.probs, labels, targets, has, t)
        f1[str(t)] = 2 * tp / max(2 * tp + fp + fn, 1)
    best = max(candidates, key=lambda t: (f1[str(t)], -abs(t - 0.5)))
    return best, f1


def sounding_share(cache: AudioCache, features: ArtifactReader, threshold: float) -> float:
    """Share of the split's real frames in which some video-labelled class sounds by the listener (p_t > threshold):
    the frames that give CMC its audio positives and CMPC / CMCC their patch labels."""
    labels = torch.from_numpy(np.asarray(features.read("labels", slice(None))))  # (N, C)
    valid = torch.from_numpy(np.asarray(features.read("frame_valid", slice(None)))).bool()  # (N, T)
    heard = heard_classes(cache.probs, labels[:, None, :], threshold).any(dim=-1)  # (N, T)
    return float(heard[valid].float().mean()) if valid.any() else 0.0


def report_sounding_share(share: float, threshold: float) -> None:
    CONSOLE.print(f"listener: {share:.1%} of train frames have a labelled class with p > {threshold} "
                  "(CMC audio positives, CMPC / CMCC patch labels)")
    if share < 0.05:
        # Seen on AV-Digits with the tiny from-scratch preset: a listener near chance never passes 0.5, and the
        # contrastive terms then train on nothing without any error.
        CONSOLE.print("[yellow]warning:[/yellow] the listener hears almost nothing at this threshold, so CMC has no "
                      "audio positives and CMPC / CMCC no patch labels; check metrics/audio-tvp.json (per-second "
                      "mAP) or lower audio_threshold")


def run_contrast(cfg: ContrastConfig, stage: str, default_init: str) -> Path:
    """Train the visual encoder + projection heads with the enabled terms; writes ckpt/<name>.pt."""
    # With cmc, cmpc and cmcc all off only the classification loss trains: the same schedule without the modules,
    # which is Table 4's control row.
    if cfg.oracle_patch_labels and cfg.oracle_patch_labels not in ORACLE_PATCH_LABELS:
        raise PcasError(f"oracle_patch_labels = {cfg.oracle_patch_labels!r}: expected \"\" or one of "
                        f"{', '.join(ORACLE_PATCH_LABELS)}")
    seed_everything(cfg.optim.seed)  # before building the heads: same seed, same initial weights
    device = resolve_device(cfg.device)
    ckpt_dir = run_paths(cfg.run)["ckpt"]
    init = cfg.init or default_init
    init_path = ckpt_dir / f"{init}.pt"
    train = open_features(cfg.run, "train")
    model, init_ckpt = visual_from_checkpoint(init_path)
    inputs = {feature_key("train"): train.artifact_id, f"ckpt/{init}.pt": init_ckpt["artifact_id"]}
    check_fresh(init_path, init_ckpt, inputs)
    cache, listener_ids = listen(ckpt_dir, listener_names(cfg.listener, cfg.co_listener), train, device, "train",
                                 fresh_against=inputs)
    inputs.update(listener_ids)
    audio_dim = cache.tokens.shape[-1]
    if not model.has_projections:  # starting from visual.pt: add the shared-space heads
        model = PCASModel(model.visual, audio_dim, cfg.proj)
    threshold_choice = None
    if cfg.threshold_on_val:
        val = open_features(cfg.run, "val")
        val_cache, _ = listen(ckpt_dir, listener_names(cfg.listener, cfg.co_listener), val, device, "val",
                              fresh_against=inputs)
        inputs[feature_key("val")] = val.artifact_id
        chosen, f1 = choose_threshold(val_cache, val, cfg.threshold_candidates)
        threshold_choice = {"chosen": chosen, "val_f1": f1}
        CONSOLE.print(f"listener threshold chosen on val: {chosen} (F1 of heard classes "
                      f"{f1[str(chosen)]:.3f}; at 0.5: {f1.get('0.5', float('nan')):.3f})")
    # the configuration as given goes into the provenance; the task trains with the effective threshold
    prov = make_provenance(stage, stage_config(cfg), cfg.optim.seed, inputs)
    if threshold_choice is not None:
        cfg = replace(cfg, audio_threshold=threshold_choice["chosen"])
    share = sounding_share(cache, train, cfg.audio_threshold)
    report_sounding_share(share, cfg.audio_threshold)
    spec = {**init_ckpt["provenance"]["model_spec"], "proj": to_dict(cfg.proj), "audio_dim": audio_dim}
    prov.update(model_spec=spec, sounding_share=share, audio_threshold=cfg.audio_threshold,
                **({"audio_threshold_choice": threshold_choice} if threshold_choice else {}))
    name = cfg.name or stage
    result = fit(ContrastTask(cfg, model, cache), cfg.optim, ckpt_dir, name, prov, resume=cfg.resume,
                 device=cfg.device)
    CONSOLE.print(f"[green]wrote[/green] {result.best_path}")
    return result.best_path
