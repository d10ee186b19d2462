"""`pcas train-visual` (Looking, paper §3.1): multi-label classification of the visual encoder from video labels.

Each valid frame is a training image labelled with its clip's video-level labels (the only supervision). The
classifier is ToCo's bias-free linear layer on the global-max-pooled patch tokens, so CAMs can later be read from its
weights. Best epoch on val by frame-level mAP against the val video labels (scoring only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import torch
from torch import nn

from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE
from pcas_cli.losses import multilabel_loss
from pcas_cli.metrics_cls import mean_average_precision
from pcas_cli.provenance import make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (PCASModel, VisualModelConfig, base_spec, build_visual, feature_key,
                                     features_path, open_features, resolve_device, run_paths, stage_config)
from pcas_cli.training.data import AugmentConfig, FrameDataset
from pcas_cli.training.loop import OptimConfig, Resume, TrainTask, fit


@dataclass(frozen=True)
class TrainVisualConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder (reads features/, writes ckpt/visual.pt)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)  # visual backbone
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                                                   epochs=8, warmup_epochs=1, batch_size=32,
                                                                   clip_grad_norm=1.0))  # optimisation
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.5, 1.0), hflip=0.5))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: Resume = False  # continue an interrupted run: True, False or "auto" (training.loop.Resume)


class VisualTask(TrainTask):
    select_metric = "map"

    def __init__(self, cfg: TrainVisualConfig, spec: dict[str, Any], device: torch.device) -> None:
        self.cfg = cfg
        self.model = PCASModel(build_visual(spec))
        self.device = device

    def train_dataset(self) -> FrameDataset:
        return FrameDataset(features_path(self.cfg.run, "train"), fields=("frames", "labels"),
                            augment=self.cfg.augment)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])["visual"]
        return {"cls": multilabel_loss(out.logits, batch["labels"])}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"map": evaluate_visual(model.visual, self.cfg.run, next(model.parameters()).device)}


@torch.no_grad()
def evaluate_visual(visual: nn.Module, run: Path, device: torch.device, batch: int = 64) -> float:
    """Frame-level multi-label mAP on val against the video labels."""
    data = FrameDataset(features_path(run, "val"), fields=("frames", "labels"))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    scores, targets = [], []
    for b in loader:
        scores.append(torch.sigmoid(visual(b["image"].to(device)).logits).cpu())
        targets.append(b["labels"])
    return mean_average_precision(torch.cat(scores).numpy(), torch.cat(targets).numpy())


def run(cfg: TrainVisualConfig) -> Path:
    seed_everything(cfg.optim.seed)  # before building the model: same seed, same initial weights
    train = open_features(cfg.run, "train")
    val = open_features(cfg.run, "val")
    spec = base_spec(train, cfg.model)
    prov = make_provenance("train-visual", stage_config(cfg), cfg.optim.seed,
                           {feature_key("train"): train.artifact_id, feature_key("val"): val.artifact_id})
    prov["model_spec"] = spec
    task = VisualTask(cfg, spec, resolve_device(cfg.device))
    result = fit(task, cfg.optim, run_paths(cfg.run)["ckpt"], "visual", prov, resume=cfg.resume, device=cfg.device)
    CONSOLE.print(f"[green]wrote[/green] {result.best_path}")
    return result.best_path


