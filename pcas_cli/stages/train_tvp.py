"""`pcas train-tvp` (Listening, paper §3.1): per-second audio classification with Temporal Visual Prompting.

The frozen Looking encoder (ckpt/visual.pt) gives each frame's pooled patch token v_t; TVP inserts it into the audio
token sequence beside second t's audio tokens. The audio encoder is trained from video-level labels only, through a
multiple-instance loss (losses.audio_mil_loss): a labelled class must sound in some second, an absent one in none.
With `tvp = false` the same encoder runs without prompts (paper Table 3, "AST").

Self-training (beyond the paper, `teacher = "<listener>"`): a trained listener's per-second probabilities on train,
kept only for each clip's labelled classes (losses.teacher_second_targets), become per-second targets beside the MIL
loss, and the student starts from the teacher's weights. Video labels and the teacher's predictions only: no masks.
A TVP student may have an audio-only teacher: TVP grafted onto a trained listener, whose prompt projection starts
fresh (`pcas train-tvp --tvp --name tvp-graft --set teacher=ast`).
`self_train_epochs = N` does both in one stage: the MIL listener as `<stem>-mil`, then `<stem>` taught by it;
with `self_train_rounds = R > 1` each student teaches the next (`<stem>-st1` .. `<stem>-st<R-1>`, then `<stem>`).

Validation (and the Table 3 numbers) scores the per-second predictions against the per-frame sounding classes read
from the val masks: scoring only, never training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE
from pcas_cli.errors import PcasError
from pcas_cli.losses import audio_mil_loss, second_bce_loss, teacher_second_targets
from pcas_cli.metrics_cls import exact_set_accuracy, mean_average_precision, set_accuracy_by_sources
from pcas_cli.provenance import make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (AudioModelConfig, audio_architecture, audio_from_checkpoint, build_audio,
                                     check_fresh, data_spec, feature_key, features_path, frame_classes_from_masks,
                                     frames_to_tensor, hear, load_state, open_features, resolve_device, run_paths,
                                     stage_config, visual_from_checkpoint, visual_prompts)
from pcas_cli.training.data import AugmentConfig, ClipDataset, heard_labels
from pcas_cli.training.loop import OptimConfig, Resume, TrainTask, fit
from pcas_cli.writing import write_json


@dataclass(frozen=True)
class TrainTVPConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder (reads features/, and ckpt/visual.pt with TVP)
    tvp: bool = True  # Temporal Visual Prompting; false = plain AST (Table 3 ablation)
    name: str = ""  # output stem in ckpt/ ("" = "tvp" with TVP, "ast" without)
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)  # audio encoder size
    mil_sharpness: float = 5.0  # log-sum-exp pooling sharpness of the MIL loss (large = max over seconds)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                                                   epochs=40, warmup_epochs=2, batch_size=16,
                                                                   clip_grad_norm=1.0))  # optimisation
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(time_mask=20, freq_mask=24))
    teacher: str = ""  # self-training: a trained listener in ckpt/ (e.g. "ast") teaching per-second targets ("": MIL)
    teacher_weight: float = 1.0  # weight of the per-second term (the MIL loss has weight 1)
    self_train_epochs: int = 0  # > 0: train <stem>-mil.pt (MIL, optim.epochs), then <stem>.pt taught by it this long
    self_train_rounds: int = 1  # with self_train_epochs: students in a chain, each taught by the one before
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: Resume = False  # continue an interrupted run: True, False or "auto" (training.loop.Resume)

    @property
    def stem(self) -> str:
        return self.name or ("tvp" if self.tvp else "ast")


class Listener(nn.Module):
    """Wraps the audio encoder so checkpoints hold `audio.*` keys."""

    def __init__(self, audio: nn.Module) -> None:
        super().__init__()
        self.audio = audio

    def forward(self, fbank: Tensor, prompts: Tensor | None, second_valid: Tensor) -> Any:
        return self.audio(fbank, visual_prompt=prompts, second_valid=second_valid)


@torch.no_grad()
def prompt_cache(features: ArtifactReader, visual: nn.Module, device: torch.device) -> Tensor:
    """(N, T, Dv) TVP prompts of every clip from the frozen Looking encoder (computed once, not every epoch)."""
    visual = visual.to(device).eval()
    out = [visual_prompts(visual, frames_to_tensor(features.read("frames", i), device)).cpu()
           for i in range(len(features))]
    return torch.stack(out)


@torch.no_grad()
def listener_probs(audio: nn.Module, features: ArtifactReader, prompts: Tensor | None,
                   device: torch.device) -> Tensor:
    """(N, T, C) per-second class probabilities of every clip (eval mode), prompted by the cached (N, T, Dv) prompts
    when the listener uses TVP."""
    audio = audio.to(device).eval()
    probs = []
    for i in range(len(features)):
        prompt = None if prompts is None else prompts[i:i + 1].to(device)
        out = hear(audio, features.clip(i, ("fbank", "frame_valid")), prompt, device)
        probs.append(torch.sigmoid(out.logits[0]).cpu())
    return torch.stack(probs)


def batch_teacher_targets(teacher_probs: Tensor, batch: dict[str, Any]) -> Tensor:
    """(B, T, C) per-second targets of a train batch from the teacher's (N, T, C) probabilities on train.

    Each clip's targets come from what the teacher heard in it, within its own video labels
    (losses.teacher_second_targets). A clip mixed with a partner (augment.mix) holds both clips' sounds, so its
    targets are the larger of the two clips' targets, second by second (both have the same valid seconds)."""
    valid = batch["frame_valid"]

    def targets(index: Tensor, labels: Tensor) -> Tensor:
        return teacher_second_targets(teacher_probs[index.cpu()].to(labels.device), labels, valid)

    own = targets(batch["index"], batch["labels"])
    if "partner" not in batch:
        return own
    partner = batch["partner"].cpu()
    mixed = (partner >= 0).to(own.device)[:, None, None]
    return torch.where(mixed, torch.maximum(own, targets(partner.clamp_min(0), batch["partner_labels"])), own)


class TVPTask(TrainTask):
    select_metric = "map"

    def __init__(self, cfg: TrainTVPConfig, spec: dict[str, Any], prompts: Tensor | None, val: "ListenerEval",
                 teacher_probs: Tensor | None = None) -> None:
        self.cfg = cfg
        self.model = Listener(build_audio(spec))
        self.prompts = prompts
        self.val = val
        self.teacher_probs = teacher_probs  # (N, T, C) on train, or None (MIL only)

    def train_dataset(self) -> ClipDataset:
        return ClipDataset(features_path(self.cfg.run, "train"), fields=("fbank", "labels", "frame_valid"),
                           augment=self.cfg.augment)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        prompts = None
        if self.prompts is not None:
            prompts = self.prompts[batch["index"].cpu()].to(batch["fbank"].device)
        out = model(batch["fbank"], prompts, batch["frame_valid"])
        valid = batch["frame_valid"]
        terms = {"mil": audio_mil_loss(out.logits, heard_labels(batch), valid, self.cfg.mil_sharpness)}
        if self.teacher_probs is not None:
            targets = batch_teacher_targets(self.teacher_probs, batch)
            terms["second"] = self.cfg.teacher_weight * second_bce_loss(out.logits, targets, valid)
        return terms

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.val.score(model.audio)


class ListenerEval:
    """Frame-level audio classification on one split: per-second predictions vs per-frame sounding classes."""

    def __init__(self, features: ArtifactReader, prompts: Tensor | None, device: torch.device) -> None:
        self.features = features
        self.prompts = prompts
        self.device = device
        targets, keep = [], []
        for i in range(len(features)):
            clip = features.clip(i, ("masks", "mask_valid", "labels"))
            targets.append(frame_classes_from_masks(clip["masks"], clip["mask_valid"], clip["labels"], features.task))
            keep.append(clip["mask_valid"])
        self.targets = np.stack(targets)  # (N, T, C): scoring only
        self.keep = np.stack(keep)  # (N, T): seconds with a ground-truth mask

    def score(self, audio: nn.Module, by_sources: bool = False) -> dict[str, Any]:
        """Per-second mAP, exact-set accuracy (p > 0.5) and scored seconds; with `by_sources`, also both accuracies
        by how many classes sound (metrics_cls.set_accuracy_by_sources; not a scalar, so not for the training log)."""
        was_training = audio.training
        p = listener_probs(audio, self.features, self.prompts, self.device).numpy()[self.keep]  # (frames, C)
        audio.train(was_training)
        y = self.targets[self.keep]
        scores: dict[str, Any] = {"map": mean_average_precision(p, y), "exact_acc": exact_set_accuracy(p, y),
                                  "frames": int(len(y))}
        return {**scores, "by_sources": set_accuracy_by_sources(p, y)} if by_sources else scores


def run(cfg: TrainTVPConfig) -> Path:
    if cfg.self_train_epochs > 0:
        cfg = train_teachers(cfg)
    seed_everything(cfg.optim.seed)  # before building the model: same seed, same initial weights
    device = resolve_device(cfg.device)
    ckpt_dir = run_paths(cfg.run)["ckpt"]
    train, val = open_features(cfg.run, "train"), open_features(cfg.run, "val")
    inputs = {feature_key("train"): train.artifact_id, feature_key("val"): val.artifact_id}
    # a student starts from its teacher's weights, not from the audio weights file its teacher started from
    audio = {**to_dict(cfg.audio), **({"weights": ""} if cfg.teacher else {})}
    spec = {**data_spec(train), "audio": audio, "tvp": cfg.tvp}
    train_prompts = val_prompts = None
    extra: dict[str, Any] = {}
    if cfg.tvp:
        # Only TVP reads the Looking encoder: an audio-only listener does not depend on visual.pt (nor does make)
        visual_path = ckpt_dir / "visual.pt"
        bundle, vck = visual_from_checkpoint(visual_path, "train-visual")
        check_fresh(visual_path, vck, inputs)
        inputs["ckpt/visual.pt"] = vck["artifact_id"]
        spec = {**vck["provenance"]["model_spec"], **spec, "visual_dim": bundle.visual.embed_dim}
        extra["visual_checkpoint"] = str(visual_path)
        train_prompts = prompt_cache(train, bundle.visual, device)
        val_prompts = prompt_cache(val, bundle.visual, device)
    prov = make_provenance("train-tvp", stage_config(cfg), cfg.optim.seed, inputs)
    prov.update(model_spec=spec, **extra)
    teacher_probs, teacher_state = None, None
    if cfg.teacher:
        teacher_probs, teacher_state, teacher_ids = teach(cfg, ckpt_dir, train, train_prompts, spec, prov["inputs"],
                                                          device)
        prov["inputs"].update(teacher_ids)
    task = TVPTask(cfg, spec, train_prompts, ListenerEval(val, val_prompts, device), teacher_probs)
    if teacher_state is not None:
        # the student starts as its teacher; a TVP student of an audio-only teacher keeps its own (seeded) prompt
        # projection, which the teacher does not have
        fresh = {k: v for k, v in task.model.state_dict().items() if ".prompt_proj." in k and k not in teacher_state}
        load_state(task.model, {**teacher_state, **fresh}, "", ckpt_dir / f"{cfg.teacher}.pt")
    result = fit(task, cfg.optim, ckpt_dir, cfg.stem, prov, resume=cfg.resume, device=cfg.device)
    write_listener_metrics(cfg, result.best_path, task, device)
    return result.best_path


def train_teachers(cfg: TrainTVPConfig) -> TrainTVPConfig:
    """Self-training in one stage: train the MIL listener `<stem>-mil` with cfg's schedule, then (rounds > 1) the
    intermediate students `<stem>-st1` .., each taught by the one before for `self_train_epochs`, and return the
    config of the last student `<stem>` (same schedule, taught by the last of them)."""
    if cfg.teacher:
        raise PcasError(f"train-tvp: set either teacher ({cfg.teacher!r}) or self_train_epochs "
                        f"({cfg.self_train_epochs}), not both")
    if cfg.self_train_rounds < 1:
        raise PcasError(f"train-tvp: self_train_rounds must be at least 1 (got {cfg.self_train_rounds})")
    teacher = replace(cfg, name=f"{cfg.stem}-mil", self_train_epochs=0, self_train_rounds=1)
    run(teacher)
    student = replace(cfg, self_train_epochs=0, self_train_rounds=1,
                      optim=replace(cfg.optim, epochs=cfg.self_train_epochs))
    for round_ in range(1, cfg.self_train_rounds):
        teacher = replace(student, name=f"{cfg.stem}-st{round_}", teacher=teacher.stem)
        run(teacher)
    return replace(student, teacher=teacher.stem)


def teach(cfg: TrainTVPConfig, ckpt_dir: Path, train: ArtifactReader, prompts: Tensor | None, spec: dict[str, Any],
          inputs: dict[str, str], device: torch.device) -> tuple[Tensor, dict[str, Tensor], dict[str, str]]:
    """The teacher's per-second probabilities on train (N, T, C), its weights (the student's start) and its id.

    The teacher must share the student's architecture and inputs (features, and visual.pt with TVP; checked), so it
    hears train with the student's cached TVP prompts rather than computing them again."""
    path = ckpt_dir / f"{cfg.teacher}.pt"
    if cfg.teacher == cfg.stem:
        raise PcasError(f"{path}: a listener cannot teach itself; give the student another name (--name)")
    if not path.is_file():
        raise PcasError(f"{path}: no such teacher listener; train it first (pcas train-tvp --name {cfg.teacher})")
    audio, teacher = audio_from_checkpoint(path)
    teacher_tvp = bool(teacher["provenance"]["model_spec"]["tvp"])
    # A TVP student may learn from an audio-only teacher (TVP grafted onto a trained listener); not the reverse
    if (teacher_tvp and not spec["tvp"]) or \
            audio_architecture(teacher["provenance"]["model_spec"]) != audio_architecture({**spec, "tvp": teacher_tvp}):
        raise PcasError(f"{path}: the teacher's architecture differs from this listener's ([audio] must match, and "
                        "a listener without TVP cannot learn from one with it)")
    # an audio-only teacher never read visual.pt, and hears train without prompts
    check_fresh(path, teacher, inputs if teacher_tvp else {k: v for k, v in inputs.items() if k != "ckpt/visual.pt"})
    probs = listener_probs(audio, train, prompts if teacher_tvp else None, device)
    return probs, teacher["model"], {f"ckpt/{cfg.teacher}.pt": teacher["artifact_id"]}


def write_listener_metrics(cfg: TrainTVPConfig, best: Path, task: TVPTask, device: torch.device) -> None:
    """Table 3 numbers of the selected weights on val: metrics/audio-<stem>.json."""
    audio, ckpt = audio_from_checkpoint(best)
    scores = task.val.score(audio.to(device), by_sources=True)
    out = run_paths(cfg.run)["metrics"] / f"audio-{cfg.stem}.json"
    write_json(out, {"name": "AST + TVP" if cfg.tvp else "AST", "split": "val", **scores,
                     "weights": str(best), "weights_id": ckpt["artifact_id"]})
    CONSOLE.print(f"[green]{'AST + TVP' if cfg.tvp else 'AST'}[/green] on val: per-second mAP "
                  f"{scores['map']:.3f}, exact-set accuracy {scores['exact_acc']:.3f} ({scores['frames']} frames)")
