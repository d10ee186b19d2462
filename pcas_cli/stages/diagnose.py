"""`pcas diagnose`: why a run does not learn, in numbers that separate the usual causes (one run folder).

1. Listening: the frozen listener's per-second mAP on train and on val, beside chance (the mean per-second class
   prevalence, the AP of a constant score). Near chance on both splits: it does not learn (underfits); high on
   train only: it memorises the train clips (overfits). Also the per-second exact-set accuracy and the share of
   silent seconds in which it hears something (a TVP listener alone reports visible objects there). By default the
   listener is combined with the audio-only co-listener as align / refine / pseudo-label use it; compare with
   `--set co_listener='""'`.
2. What align / refine get from it: the share of train frames in which a video-labelled class is heard at
   p > threshold (their audio positives), and the precision / recall of those classes against the train masks.
3. What CMPC trains on (`--set 'patch_labels=["align"]'`, any align / refine checkpoints): the patch labels of eq. 2
   that the checkpoint's projection heads give (its own thresholds) on the heard train frames, scored against the
   train masks: share of patches labelled sounding, their precision and recall, the share of "not sounding" labels
   that fall on a sounding object, beside the base rate. Precision near the base rate: CMPC contrasts noise.
   Also what CMCC (eq. 3) gets from those labels: random crops per train frame (the checkpoint's CMCC crop settings;
   silent frames all ignored, as in training) labelled positive / negative with each of `crop_ignored_scores`, and
   the share of frames with both kinds. Eq. 3 is an InfoNCE within a frame: without a negative crop it is ~0.
   On generated data (visible-object maps), where the similarity behind the labels points: its mean on sounding
   objects, silent objects and background, and where each frame's most similar patch lies. A similarity highest on
   the background labels the background sounding (precision below the base rate).
4. Optional probe (`--probe-steps N`): a fresh audio encoder of the configured size trained for N steps on the
   per-second classes of the train masks (full supervision of the audio side alone), scored on val. It asks whether
   the architecture can learn these sounds at all; the weakly supervised listener will not do better.
5. Optional prompt check (`--set prompt_check=true`, a TVP listener): the listener alone on val with each clip's own
   frames as its prompts, and with the frames of another clip of the split (the next one). A listener that uses
   what it sees loses mAP when it sees another scene; one that ignores its prompts scores the same both ways.
   With `--set listening=false` it runs without 1 and 2, which listen to every train clip.
6. Optional vision check (`--set vision_check=true`, generated AVSS-layout data): could seeing help the listener
   at all? Its per-second val probabilities with the classes not visible in the frame zeroed (the generator's
   visible-object maps: a ceiling), and multiplied by the Looking encoder's class probabilities (late fusion,
   nothing trained). A TVP listener that gains less than the late fusion leaves what it sees unused.
7. Optional visual probe (`--set visual_probe_steps=N`, generated data sets with visible-object maps): a fresh
   Looking encoder of the configured backbone (`model`, as train-visual's) trained for N steps on the classes
   *visible* in each train frame (clean frame-level labels, sounding or not), scored on val against the visible
   classes and against the video labels. It asks whether the backbone can learn the objects' appearance at all;
   the weakly supervised Looking encoder learns from noisier labels.
8. Optional paired comparison (`--set paired_with=ast`): the listener and another one, each alone on val and on
   test (a TVP listener prompted by each clip's own frames), per-second mAP and exact-set accuracy, and the
   listener's lead with a 95% paired bootstrap interval over the clips (both scored on the same drawn clips).
   Table 3's "TVP improves recognition" is a claim about 60-odd val clips; this says whether it is beyond their
   noise, and whether it holds on test, which (unlike val) chose no listener's epoch.

A diagnostic, like scoring: it reads the masks of train (2, 3, 4), val (1, 4, 5, 6, 8) and test (8), and the
visible maps (3, 6, 7), to measure, and nothing it computes feeds back into the pipeline. Writes
<run>/metrics/<out>.json (diagnose.json) and prints a table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError
from pcas_cli.losses import IGNORE, crop_labels_from_patch_labels, patch_audio_similarity
from pcas_cli.metrics import BOOTSTRAP_RESAMPLES, percentile_interval
from pcas_cli.metrics_cls import (exact_set_accuracy, mean_average_precision, paired_bootstrap_difference,
                                  set_accuracy_by_sources)
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (AudioCache, AudioModelConfig, VisualModelConfig, base_spec, build_audio,
                                     build_audio_cache, build_visual, classes_in_masks, frame_classes_from_masks,
                                     frames_to_tensor, listen, listener, listener_names, open_features,
                                     resolve_device, run_paths, second_targets, stage_config, visual_from_checkpoint)
from pcas_cli.stages._contrast import (CMCCParams, CMPCParams, frame_patch_labels, heard_classes, heard_counts,
                                       random_boxes, sounding_share)
from pcas_cli.training.data import AugmentConfig, spec_augment
from pcas_cli.writing import write_json


@dataclass(frozen=True)
class DiagnoseConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder (reads features/, ckpt/<listener>.pt)
    listener: str = "tvp"  # listener checkpoint to examine: ckpt/<listener>.pt ("" = skip 1 and 2)
    listening: bool = True  # 1 and 2 (listens to every train and val clip); false: only the optional parts asked for
    co_listener: str = "ast"  # combined with it as align / refine / pseudo-label do (geometric mean); "" = alone
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)  # listener probabilities at which a class counts as heard
    decision_threshold: float = 0.5  # for the per-second exact-set accuracy and the silent seconds heard
    patch_labels: tuple[str, ...] = ()  # align / refine checkpoints whose CMPC patch labels to score (3.)
    crop_ignored_scores: tuple[float, ...] = (0.5, 0.0)  # CMCC crop rules to count under (3.): how much an ignored
    # CMPC cell counts toward a crop's sounding share (cmcc_params.ignored_score; 0.5 = ToCo's ROI rule)
    probe_steps: int = 0  # > 0: train a per-second supervised audio probe for this many steps (4.)
    probe_batch: int = 32  # seconds per probe step
    probe_lr: float = 1e-3  # AdamW peak learning rate of the probe (one-cycle schedule)
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)  # the probe's encoder (as train-tvp's)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(time_mask=20, freq_mask=24))  # probe
    prompt_check: bool = False  # score the (TVP) listener alone on val with its own and another clip's frames (5.)
    paired_with: str = ""  # another listener (ckpt/<name>.pt) compared with `listener`, both alone (8.)
    vision_check: bool = False  # the listener on val gated by the visible classes / by visual.pt's (6.)
    vision_exponents: tuple[float, ...] = (0.25, 0.5, 1.0)  # late fusion p_t * q_t ** a for each a (6.)
    visual_probe_steps: int = 0  # > 0: train a Looking encoder on the visible classes for this many steps (7.)
    visual_probe_lr: float = 1e-3  # its AdamW peak learning rate (one-cycle schedule); batch: probe_batch frames
    model: VisualModelConfig = field(default_factory=VisualModelConfig)  # the visual probe's backbone
    out: str = "diagnose"  # report name: <run>/metrics/<out>.json
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def chance_map(targets: np.ndarray) -> float:
    """mAP of a constant score over (frames, C) targets = mean prevalence of the classes that occur."""
    prevalence = targets.mean(axis=0)
    return float(prevalence[targets.any(axis=0)].mean()) if targets.any() else 0.0


def heard_stats(cache: AudioCache, features: ArtifactReader, targets: np.ndarray, has: np.ndarray,
                threshold: float) -> dict[str, float]:
    """What align / refine treat as sounding at this threshold; precision / recall on frames with masks."""
    labels = torch.from_numpy(np.asarray(features.read("labels", slice(None))))[:, None, :]  # (N, 1, C)
    tp, fp, fn = heard_counts(cache.probs, labels, targets, has, threshold)
    return {"threshold": threshold, "frames_heard": sounding_share(cache, features, threshold),
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}


def second_decisions(probs: np.ndarray, targets: np.ndarray, has: np.ndarray, threshold: float) -> dict[str, float]:
    """Per-second decisions at p > threshold: the share of seconds whose set of heard classes is exactly right, and
    the share of silent seconds (no sounding class in the mask) in which some class is heard (hallucinations).

    probs (N, T, C) float, targets (N, T, C) bool, has (N, T) bool."""
    heard = probs > threshold
    silent = has & ~targets.any(-1)
    return {"exact_set": float((heard == targets).all(-1)[has].mean()) if has.any() else 0.0,
            "silent_heard": float(heard.any(-1)[silent].mean()) if silent.any() else 0.0,
            "silent_seconds": int(silent.sum()), "decision_threshold": threshold,
            "by_sources": set_accuracy_by_sources(probs[has], targets[has], threshold)}


def require_visible(features: ArtifactReader, what: str) -> None:
    if not features.meta.get("has_visible"):
        raise PcasError(f"{features.path}: has no visible-object maps (only generated data sets do); {what} needs them")


def second_scores(probs: np.ndarray, targets: np.ndarray, has: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per-second mAP and decisions of (N, T, C) probabilities on the seconds that have masks."""
    return {"map": mean_average_precision(probs[has], targets[has]),
            **second_decisions(probs, targets, has, threshold)}


Targets = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> second_targets of that split


Hearing = dict[str, tuple[AudioCache, dict[str, str]]]  # split -> what `listen` returned for that split


def listener_report(cfg: DiagnoseConfig, hearing: Hearing, split_targets: Targets) -> dict[str, Any]:
    out: dict[str, Any] = {"listener": " x ".join(listener_names(cfg.listener, cfg.co_listener))}
    for split, (targets, has) in split_targets.items():
        feats = open_features(cfg.run, split)
        cache, out["listener_ids"] = hearing[split]
        probs = cache.probs.numpy()
        out[split] = {"chance_map": chance_map(targets[has]), "frames_sounding": float(targets.any(-1)[has].mean()),
                      "frames": int(has.sum()), **second_scores(probs, targets, has, cfg.decision_threshold)}
        if split == "train":
            out["heard"] = [heard_stats(cache, feats, targets, has, t) for t in cfg.thresholds]
    return out


Loaded = tuple[torch.nn.Module, torch.nn.Module | None, dict[str, Any]]  # what _common.listener returns
AloneProbs = Callable[[str, str, int], np.ndarray]  # (split, name, prompt shift) -> listened_alone's probabilities


def listened_alone(features: ArtifactReader, loaded: Loaded, device: torch.device, prompt_shift: int = 0,
                   desc: str = "listening") -> np.ndarray:
    """A loaded listener alone on a split: per-second probabilities (N, T, C); a TVP listener is prompted by the
    frames of clip i + prompt_shift (an audio-only listener ignores the shift)."""
    if prompt_shift and len(features) < 2:
        raise PcasError(f"{features.path}: prompt_check needs at least two clips to swap prompts between")
    audio, prompt_visual, _ = loaded
    return build_audio_cache(features, audio, prompt_visual, device, prompt_shift=prompt_shift,
                             desc=desc).probs.numpy()


def prompt_report(cfg: DiagnoseConfig, load: Callable[[str], Loaded], alone: AloneProbs,
                  val_targets: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Does the TVP listener use what it sees (paper §3.1)? It alone, per second on val, prompted by each clip's own
    frames and by the next clip's frames (another scene, the same sounds)."""
    _, prompt_visual, ckpt = load(cfg.listener)
    if prompt_visual is None:
        raise PcasError(f"{run_paths(cfg.run)['ckpt'] / cfg.listener}.pt: prompt_check needs a listener trained with "
                        "TVP; this one hears audio only")
    targets, has = val_targets
    return {"listener": cfg.listener, "listener_id": ckpt["artifact_id"], "frames": int(has.sum()),
            **{key: second_scores(alone("val", cfg.listener, shift), targets, has, cfg.decision_threshold)
               for key, shift in (("own", 0), ("other_clip", 1))}}


def paired_report(cfg: DiagnoseConfig, load: Callable[[str], Loaded], alone: AloneProbs,
                  targets_of: Callable[[str], tuple[np.ndarray, np.ndarray]], resamples: int = BOOTSTRAP_RESAMPLES
                  ) -> dict[str, Any]:
    """Is the listener ahead of `paired_with` beyond the noise of the clips? Both alone on val and on test (left out
    where extracted without masks), each score, and listener - paired_with with its 95% interval from a paired
    bootstrap over the split's clips."""
    if cfg.paired_with == cfg.listener:
        raise PcasError(f"diagnose: paired_with names the examined listener itself ({cfg.listener})")
    out: dict[str, Any] = {"listener": cfg.listener, "paired_with": cfg.paired_with, "resamples": resamples,
                           "listener_ids": {n: load(n)[2]["artifact_id"] for n in (cfg.listener, cfg.paired_with)}}
    exact = functools.partial(exact_set_accuracy, threshold=cfg.decision_threshold)
    for split in ("val", "test"):
        if split == "test" and open_features(cfg.run, split).meta.get("unscored"):
            continue  # `extract --test-without-masks`: nothing to score against
        probs_a, probs_b = alone(split, cfg.listener, 0), alone(split, cfg.paired_with, 0)
        targets, has = targets_of(split)
        clip_of_second = np.broadcast_to(np.arange(has.shape[0])[:, None], has.shape)[has]  # (S,)
        a, b, y = probs_a[has], probs_b[has], targets[has]  # (S, C): the seconds with masks
        scores: dict[str, Any] = {"clips": int(has.any(-1).sum()), "frames": int(has.sum())}
        for key, score in (("map", mean_average_precision), ("exact_set", exact)):
            lead = paired_bootstrap_difference(score, a, b, y, clip_of_second, resamples, cfg.seed)
            score_a, score_b = score(a, y), score(b, y)
            scores[key] = {"listener": score_a, "paired_with": score_b, "difference": score_a - score_b,
                           "difference_ci95": percentile_interval(lead)}
        out[split] = scores
    return out


@torch.no_grad()
def vision_report(cfg: DiagnoseConfig, cache: AudioCache, device: torch.device,
                  val_targets: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Could seeing help the listener (paper §3.1's premise)? Its per-second val probabilities p_t (N, T, C): alone,
    times the visible classes of the frame (0/1, an oracle ceiling), and times q_t ** a, the Looking encoder's
    (visual.pt) class probabilities of the frame, for each exponent a (late fusion, nothing trained)."""
    val = open_features(cfg.run, "val")
    require_visible(val, "vision_check")
    visual = visual_from_checkpoint(run_paths(cfg.run)["ckpt"] / "visual.pt", "train-visual")[0].visual
    visual = visual.to(device).eval()
    visible_rows, looking_rows = [], []  # per clip: (T, C) visible classes, (T, C) visual.pt's probabilities
    for i in range(len(val)):
        c = val.clip(i, ("frames", "visible"))
        visible_rows.append(classes_in_masks(c["visible"], len(val.classes)))
        looking_rows.append(torch.sigmoid(visual(frames_to_tensor(c["frames"], device)).logits).cpu().numpy())
    visible, looking = np.stack(visible_rows), np.stack(looking_rows)  # (N, T, C)
    targets, has = val_targets
    probs = cache.probs.numpy()
    return {"listener": second_scores(probs, targets, has, cfg.decision_threshold),
            "visible_oracle": second_scores(probs * visible, targets, has, cfg.decision_threshold),
            "looking_map_visible": mean_average_precision(looking[has], visible[has]),
            "fused": [{"exponent": a, **second_scores(probs * looking ** a, targets, has, cfg.decision_threshold)}
                      for a in cfg.vision_exponents]}


def patch_label_scores(labels: torch.Tensor, sounding: torch.Tensor) -> dict[str, float]:
    """CMPC patch labels (P,) in {0, 1, IGNORE} against the truth (P,) bool "the patch is mostly a sounding object"."""
    pos, neg, n = labels == 1, labels == 0, max(labels.numel(), 1)
    hit, n_pos, n_true = int((pos & sounding).sum()), int(pos.sum()), int(sounding.sum())
    return {"positive_share": n_pos / n, "precision": hit / max(n_pos, 1), "recall": hit / max(n_true, 1),
            "negatives_sounding": int((neg & sounding).sum()) / max(int(neg.sum()), 1),
            "ignored_share": int((labels == IGNORE).sum()) / n, "base_rate": n_true / n}


REGIONS = ("sounding_object", "silent_object", "background")


def similarity_by_region(similarity: torch.Tensor, sounding: torch.Tensor, visible: torch.Tensor) -> np.ndarray:
    """Where the audio-patch similarity points, per frame: (B, N) similarities (per-frame normalised), (B, N) bool
    "the patch is mostly a sounding object", (B, N) bool "mostly any object" -> (3, 3) sums over the frames, one row
    per region of REGIONS (sounding objects, silent objects = visible and not sounding, background = neither):
    [frames with patches of that region, the sum over those frames of the region's mean similarity, frames whose
    most similar patch lies in it]."""
    regions = torch.stack([sounding, visible & ~sounding, ~visible & ~sounding])  # (3, B, N)
    counts = regions.sum(dim=2)  # (3, B)
    present = counts > 0
    means = (similarity[None] * regions).sum(dim=2) / counts.clamp(min=1)  # (3, B)
    best = similarity.argmax(dim=1)  # (B,)
    at_best = regions.gather(2, best[None, :, None].expand(3, -1, 1))[..., 0]  # (3, B)
    return torch.stack([present.sum(1), (means * present).sum(1), at_best.sum(1)], dim=1).double().numpy()


def region_shares(sums: np.ndarray) -> dict[str, dict[str, float]]:
    """similarity_by_region summed over frames -> per region: the mean similarity of its patches (averaged over the
    frames that have the region) and the share of frames whose most similar patch lies in it."""
    frames = max(float(sums[:, 2].sum()), 1.0)  # every frame's best patch lies in exactly one region
    return {r: {"frames": int(n), "mean_similarity": total / max(n, 1.0), "best_patch_share": best / frames}
            for r, (n, total, best) in zip(REGIONS, sums)}


def crop_counts(positive: torch.Tensor) -> np.ndarray:
    """CMCC crop labels (B, K) bool -> counts [frames, crops, negative crops, frames with a positive and a negative
    crop] (eq. 3 contrasts a frame's positive crops with its own negatives only)."""
    pos, neg = positive.bool(), ~positive.bool()
    both = pos.any(dim=1) & neg.any(dim=1)
    return np.array([positive.shape[0], positive.numel(), int(neg.sum()), int(both.sum())], np.int64)


def crop_shares(counts: np.ndarray) -> dict[str, float]:
    """crop_counts summed over frames -> the shares the report gives."""
    frames, crops, negative, both = (int(c) for c in counts)
    return {"frames": frames, "negative_crops": negative / max(crops, 1), "frames_with_both": both / max(frames, 1)}


@torch.no_grad()
def patch_label_report(ckpt_dir: Path, name: str, train: ArtifactReader, cache: AudioCache, device: torch.device,
                       ignored_scores: tuple[float, ...] = (0.5, 0.0), seed: int = 0) -> dict[str, Any]:
    """Score the CMPC labels of ckpt/<name>.pt on the train frames with a mask in which a labelled class is heard
    (the frames CMPC trains on), with the thresholds that checkpoint was trained with; and count the CMCC crops its
    labels give on every train frame (silent ones all ignored, as refine labels them), under each crop rule.

    Crops are drawn as in training (the checkpoint's CMCC crop count and size, seeded), on the frames without
    training's flips and crops: counts, not a replay of one epoch.

    With visible-object maps (generated data), also where the similarity the labels come from points on those
    frames: its mean (per-frame min-max normalised, as eq. 2 thresholds it) on sounding objects, silent objects and
    background, and where each frame's most similar patch lies (`similarity_by_region`)."""
    model, ckpt = visual_from_checkpoint(ckpt_dir / f"{name}.pt")
    if not model.has_projections:
        raise PcasError(f"{ckpt_dir / name}.pt: has no projection heads (the Looking encoder): no patch labels")
    trained = ckpt["provenance"]["config"]
    cmpc, crop = CMPCParams(**trained["cmpc_params"]), CMCCParams(**trained["cmcc_params"])
    threshold = ckpt["provenance"].get("audio_threshold", trained["audio_threshold"])  # chosen on val, or as set
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    all_labels, all_truth = [], []
    counts = {score: np.zeros(4, np.int64) for score in ignored_scores}
    has_visible = bool(train.meta.get("has_visible"))
    regions = np.zeros((len(REGIONS), 3))
    for i in range(len(train)):
        c = train.clip(i, ("frames", "masks", "mask_valid", "labels") + (("visible",) if has_visible else ()))
        heard = heard_classes(cache.probs[i], torch.from_numpy(c["labels"])[None], threshold).any(-1)  # (T,)
        out = model(frames_to_tensor(c["frames"], device), audio_tokens=cache.tokens[i].to(device))
        labels = frame_patch_labels(out["z_patch"], out["z_audio"], heard.to(device), cmpc).cpu()  # (T, N)
        boxes = random_boxes(len(labels), crop.crops, crop.crop_fraction, generator)
        for score in ignored_scores:
            positive = crop_labels_from_patch_labels(labels.view(len(labels), *out["visual"].grid), boxes,
                                                     crop.positive_share, score)
            counts[score] += crop_counts(positive)
        keep = torch.from_numpy(c["mask_valid"]).bool() & heard  # (T,)
        if not keep.any():
            continue
        all_labels.append(labels[keep])
        all_truth.append(mostly(c["masks"][keep.numpy()], out["visual"].grid))
        if has_visible:
            similarity = patch_audio_similarity(out["z_patch"], out["z_audio"], normalize=True).cpu()  # (T, N)
            regions += similarity_by_region(similarity[keep], all_truth[-1],
                                            mostly(c["visible"][keep.numpy()], out["visual"].grid))
    if not all_labels:
        raise PcasError(f"{ckpt_dir.parent}: the listener hears no labelled class in any masked train frame")
    return {"weights": name, "high": cmpc.high, "low": cmpc.low,
            **patch_label_scores(torch.cat(all_labels).flatten(), torch.cat(all_truth).flatten()),
            "cmcc_crops": [{"ignored_score": score, "trained_with": score == crop.ignored_score,
                            **crop_shares(n)} for score, n in counts.items()],
            **({"similarity_regions": region_shares(regions)} if has_visible else {})}


def mostly(masks: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) class-index masks -> (B, N) bool: the patch is mostly (> half) an object of any class."""
    covered = torch.from_numpy((masks > 0).astype(np.float32))[:, None]  # (B, 1, H, W)
    return F.adaptive_avg_pool2d(covered, grid).flatten(1) > 0.5


def probe_data(features: ArtifactReader, targets: np.ndarray, has: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Seconds with a mask: fbank (S, F, M) float16 and per-second classes (S, C) float."""
    x = np.concatenate([features.read("fbank", i)[has[i]] for i in range(len(features))])
    return torch.from_numpy(x), torch.from_numpy(targets[has]).float()


@torch.no_grad()
def _probe_scores(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 64) -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model(x[i:i + batch, None].float().to(device)).logits[:, 0]).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def train_probe(model: torch.nn.Module, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                weight_decay: float, pct_start: float, what: str, clip_grad_norm: float | None = None) -> None:
    """The probes' loop: AdamW with a one-cycle rate, binary cross-entropy on (logits, targets) = batch()."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    with progress(transient=True) as bar:
        task = bar.add_task(what, total=steps, info="")
        for _ in range(steps):
            model.train()
            logits, targets = batch()
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            opt.step()
            sched.step()
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")


def probe_report(cfg: DiagnoseConfig, device: torch.device, split_targets: Targets) -> dict[str, Any]:
    seed_everything(cfg.seed)
    train, val = open_features(cfg.run, "train"), open_features(cfg.run, "val")
    (x_tr, y_tr), (x_va, y_va) = probe_data(train, *split_targets["train"]), probe_data(val, *split_targets["val"])
    if not len(x_tr) or not len(x_va):
        raise PcasError(f"{cfg.run}: the probe needs masked seconds in train and val")
    spec = {"num_classes": y_tr.shape[1], "n_mels": train.dims["M"], "frames_per_second": train.dims["F"],
            "max_seconds": train.dims["T"], "tvp": False, "visual_dim": None, "audio": to_dict(cfg.audio)}
    model = build_audio(spec).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(x_tr), (cfg.probe_batch,), generator=gen)
        x = spec_augment(x_tr[idx].float(), cfg.augment, gen).to(device)  # (B, F, M), one second each
        return model(x[:, None]).logits[:, 0], y_tr[idx].to(device)

    train_probe(model, batch, cfg.probe_steps, cfg.probe_lr, weight_decay=0.01, pct_start=0.05,
                what="probe (per-second labels)")
    scores = {"train": (_probe_scores(model, x_tr, device), y_tr.numpy()),
              "val": (_probe_scores(model, x_va, device), y_va.numpy())}
    return {"steps": cfg.probe_steps, "audio": to_dict(cfg.audio), "seconds": {"train": len(x_tr), "val": len(x_va)},
            **{f"{s}_map": mean_average_precision(*scores[s]) for s in scores},
            **{f"{s}_by_sources": set_accuracy_by_sources(*scores[s]) for s in scores},
            "chance_map": chance_map(y_va.numpy().astype(bool))}


def _frame_pairs(features: ArtifactReader) -> np.ndarray:
    """(P, 2) int (clip, frame) of every valid frame."""
    return np.argwhere(np.asarray(features.read("frame_valid", slice(None)), dtype=bool))


@torch.no_grad()
def _visual_probe_scores(model: torch.nn.Module, features: ArtifactReader, device: torch.device
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (P, C), visible classes (P, C) and video labels (P, C) of every valid frame, streamed per clip."""
    model.eval()
    scores, visible, video = [], [], []
    for i in range(len(features)):
        c = features.clip(i, ("frames", "visible", "frame_valid", "labels"))
        valid = np.asarray(c["frame_valid"], dtype=bool)
        if not valid.any():
            continue
        scores.append(torch.sigmoid(model(frames_to_tensor(c["frames"][valid], device)).logits).cpu().numpy())
        visible.append(classes_in_masks(c["visible"][valid], len(features.classes)))
        video.append(np.repeat(np.asarray(c["labels"], dtype=bool)[None], int(valid.sum()), axis=0))
    return np.concatenate(scores), np.concatenate(visible), np.concatenate(video)


def visual_probe_report(cfg: DiagnoseConfig, device: torch.device) -> dict[str, Any]:
    seed_everything(cfg.seed)
    train, val = open_features(cfg.run, "train"), open_features(cfg.run, "val")
    for f in (train, val):
        require_visible(f, "the visual probe")
    spec = base_spec(train, cfg.model)
    model = build_visual(spec).to(device)
    pairs, num_classes = _frame_pairs(train), len(train.classes)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        picks = pairs[torch.randint(0, len(pairs), (cfg.probe_batch,), generator=gen).numpy()]
        # one frame per pick, read from its clip (memory does not grow with the split)
        frames = np.stack([train.read("frames", int(i))[t] for i, t in picks])
        target = classes_in_masks(np.stack([train.read("visible", int(i))[t] for i, t in picks]), num_classes)
        return model(frames_to_tensor(frames, device)).logits, torch.from_numpy(target).float().to(device)

    train_probe(model, batch, cfg.visual_probe_steps, cfg.visual_probe_lr, weight_decay=0.05, pct_start=0.1,
                what="visual probe (visible classes)", clip_grad_norm=1.0)
    scores, visible, video = _visual_probe_scores(model, val, device)
    return {"steps": cfg.visual_probe_steps, "backbone": cfg.model.backbone, "frames": {"train": len(pairs),
            "val": len(scores)}, "val_map_visible": mean_average_precision(scores, visible),
            "val_map_video_labels": mean_average_precision(scores, video),
            "chance_map_visible": chance_map(visible), "chance_map_video_labels": chance_map(video)}


def _sources_cell(groups: dict[str, dict]) -> str:
    def share(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    one, overlap = groups["one"], groups["overlap"]
    return f"{share(one['exact'])} / {share(overlap['exact'])} ({share(overlap['top_n'])})"


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"pcas diagnose {report['run']}")
    for col in ("what", "train", "val", "chance (val)"):
        table.add_column(col)
    if "train" in report:
        tr, va = report["train"], report["val"]
        table.add_row(f"listener {report['listener']} per-second mAP", f"{tr['map']:.3f}", f"{va['map']:.3f}",
                      f"{va['chance_map']:.3f}")
        table.add_row(f"exact set / silent seconds heard at p > {tr['decision_threshold']}",
                      *(f"{d['exact_set']:.2f} / {d['silent_heard']:.2f}" for d in (tr, va)), "")
        table.add_row("exact set in one-source / overlapped seconds (overlapped: true classes ranked first)",
                      *(_sources_cell(d["by_sources"]) for d in (tr, va)), "")
        for h in report["heard"]:
            table.add_row(f"heard at p > {h['threshold']}: frames / precision / recall",
                          f"{h['frames_heard']:.2f} / {h['precision']:.2f} / {h['recall']:.2f}", "",
                          f"truly sounding {tr['frames_sounding']:.2f}")
    for p in report.get("patch_labels", []):
        table.add_row(f"CMPC labels of {p['weights']}: sounding share / precision / recall",
                      f"{p['positive_share']:.2f} / {p['precision']:.2f} / {p['recall']:.2f}", "",
                      f"base rate {p['base_rate']:.2f}")
        if "similarity_regions" in p:
            where = p["similarity_regions"]
            table.add_row(f"audio-patch similarity of {p['weights']}: mean on sounding / silent objects / background",
                          " / ".join(f"{where[r]['mean_similarity']:.2f}" for r in REGIONS), "", "")
            table.add_row("... frames whose most similar patch is a sounding / silent object / background",
                          " / ".join(f"{where[r]['best_patch_share']:.2f}" for r in REGIONS), "", "")
        for c in p["cmcc_crops"]:
            table.add_row(f"CMCC crops of {p['weights']}, ignored cells counting {c['ignored_score']:g}"
                          f"{' (as trained)' if c['trained_with'] else ''}: negative crops / frames with both",
                          f"{c['negative_crops']:.2f} / {c['frames_with_both']:.2f}", "", "")
    if "prompts" in report:
        own, other = report["prompts"]["own"], report["prompts"]["other_clip"]
        table.add_row(f"{report['prompts']['listener']} alone, val mAP / exact set: own frames -> another clip's",
                      "", f"{own['map']:.3f} / {own['exact_set']:.2f} -> {other['map']:.3f} / {other['exact_set']:.2f}",
                      "")
    if "paired" in report:
        p = report["paired"]
        for split in ("val", "test"):
            for key, what in (("map", "mAP"), ("exact_set", "exact set")) if split in p else ():
                s, (lo, hi) = p[split][key], p[split][key]["difference_ci95"]
                table.add_row(f"{p['listener']} alone - {p['paired_with']} alone, {split} {what} (paired 95% over "
                              f"{p[split]['clips']} clips)", "", f"{s['listener']:.3f} - {s['paired_with']:.3f} = "
                              f"{s['difference']:+.3f} ({lo:+.3f} .. {hi:+.3f})", "")
    if "vision" in report:
        v = report["vision"]
        table.add_row("vision check: listener alone -> x visible classes (oracle), val mAP / exact set", "",
                      f"{v['listener']['map']:.3f} / {v['listener']['exact_set']:.2f} -> "
                      f"{v['visible_oracle']['map']:.3f} / {v['visible_oracle']['exact_set']:.2f}", "")
        for f in v["fused"]:
            table.add_row(f"vision check: x visual.pt probabilities ^ {f['exponent']:g} (its mAP vs visible "
                          f"{v['looking_map_visible']:.3f})", "", f"{f['map']:.3f} / {f['exact_set']:.2f}", "")
    if "probe" in report:
        p = report["probe"]
        table.add_row(f"probe: per-second supervised encoder, {p['steps']} steps", f"{p['train_map']:.3f}",
                      f"{p['val_map']:.3f}", f"{p['chance_map']:.3f}")
        table.add_row("probe: exact set in one-source / overlapped seconds (true classes ranked first)",
                      *(_sources_cell(p[f"{s}_by_sources"]) for s in ("train", "val")), "")
    if "visual_probe" in report:
        p = report["visual_probe"]
        table.add_row(f"visual probe {p['backbone']}, {p['steps']} steps: mAP vs visible classes", "",
                      f"{p['val_map_visible']:.3f}", f"{p['chance_map_visible']:.3f}")
        table.add_row("visual probe: mAP vs video labels", "", f"{p['val_map_video_labels']:.3f}",
                      f"{p['chance_map_video_labels']:.3f}")
    CONSOLE.print(table)


def run(cfg: DiagnoseConfig) -> Path:
    device = resolve_device(cfg.device)
    report: dict[str, Any] = {"run": str(cfg.run), "config": stage_config(cfg)}
    if cfg.patch_labels and not cfg.listener:
        raise PcasError("diagnose: patch_labels needs a listener (the audio tokens CMPC compares patches with)")
    if cfg.vision_check and not cfg.listener:
        raise PcasError("diagnose: vision_check needs a listener (whose probabilities to gate)")
    if cfg.paired_with and not cfg.listener:
        raise PcasError("diagnose: paired_with needs a listener (to compare with it)")
    ckpt_dir = run_paths(cfg.run)["ckpt"]
    # Each split's masks are read, and each split listened to, at most once and only when a part asked for needs
    # them: the prompt check alone (Table 3's make rule) does not listen to the 2,000 train clips of AV-Digits.
    targets_of = functools.cache(lambda split: second_targets(open_features(cfg.run, split)))
    hearing_of = functools.cache(lambda split: listen(ckpt_dir, listener_names(cfg.listener, cfg.co_listener),
                                                      open_features(cfg.run, split), device, split))
    load = functools.cache(lambda name: listener(ckpt_dir / f"{name}.pt", device))  # each checkpoint read once
    alone = functools.cache(lambda split, name, shift: listened_alone(  # each (split, listener, prompts) heard once
        open_features(cfg.run, split), load(name), device, shift, desc=f"{name} on {split}, prompt shift {shift}"))
    splits = ("train", "val")
    if cfg.listener and cfg.listening:
        report.update(listener_report(cfg, {s: hearing_of(s) for s in splits}, {s: targets_of(s) for s in splits}))
    if cfg.patch_labels:
        train = open_features(cfg.run, "train")
        report["patch_labels"] = [patch_label_report(ckpt_dir, name, train, hearing_of("train")[0], device,
                                                     cfg.crop_ignored_scores, cfg.seed)
                                  for name in cfg.patch_labels]
    if cfg.prompt_check:
        report["prompts"] = prompt_report(cfg, load, alone, targets_of("val"))
    if cfg.paired_with:
        report["paired"] = paired_report(cfg, load, alone, targets_of)
    if cfg.vision_check:
        report["vision"] = vision_report(cfg, hearing_of("val")[0], device, targets_of("val"))
    if cfg.probe_steps > 0:
        report["probe"] = probe_report(cfg, device, {s: targets_of(s) for s in splits})
    if cfg.visual_probe_steps > 0:
        report["visual_probe"] = visual_probe_report(cfg, device)
    print_report(report)
    out = write_json(run_paths(cfg.run)["metrics"] / f"{cfg.out}.json", report)
    CONSOLE.print(f"[green]wrote[/green] {out}")
    return out
