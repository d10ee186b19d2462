"""`pcas train-supervised`: the FULLY SUPERVISED upper bound (paper Table 2's fully supervised rows).

The same visual backbone as PCAS with an FPN decoder (output stride 4, then bilinear to the frame: finer than the
pseudo-labels, so the bound is fair) trained with per-pixel cross-entropy on the ground-truth masks of the train split
(frames without a mask, e.g. S4 train frames 2-5, are ignored). This is the only stage that reads training masks; it
exists to measure how far weak supervision is from full supervision. Best epoch by val mIoU; then it predicts val and
test into supervised/{val,test}.h5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.console import CONSOLE
from pcas_cli.losses import IGNORE, segmentation_loss
from pcas_cli.metrics import BinaryMIoU, SemanticScores
from pcas_cli.provenance import make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (VisualModelConfig, base_spec, build_visual, feature_key, features_path,
                                     frames_to_tensor, open_features, resolve_device, run_paths, stage_config)
from pcas_cli.stages._predict import prediction_classes, write_predictions
from pcas_cli.training.checkpoint import load_checkpoint
from pcas_cli.training.data import AugmentConfig, FrameDataset
from pcas_cli.training.loop import OptimConfig, TrainTask, fit


@dataclass(frozen=True)
class TrainSupervisedConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder (reads features/, writes ckpt/supervised.pt, supervised/)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)  # same backbone as PCAS
    decoder_width: int = 128  # FPN decoder channels
    out: str = "supervised"  # prediction folder under the run
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                                                   epochs=12, warmup_epochs=1, batch_size=32,
                                                                   clip_grad_norm=1.0))  # optimisation
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.5, 1.0), hflip=0.5))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue an interrupted run


class SupervisedModel(nn.Module):
    def __init__(self, spec: dict[str, Any], num_outputs: int, width: int) -> None:
        super().__init__()
        from pcas_cli.models import SegmentationModel

        self.seg = SegmentationModel(build_visual(spec), num_outputs, hidden=width)

    def forward(self, images: Tensor) -> Tensor:
        return self.seg(images)


class SupervisedTask(TrainTask):
    select_metric = "miou"

    def __init__(self, cfg: TrainSupervisedConfig, model: SupervisedModel, val: ArtifactReader) -> None:
        self.cfg, self.model, self.val = cfg, model, val

    def train_dataset(self) -> FrameDataset:
        return FrameDataset(features_path(self.cfg.run, "train"), fields=("frames",), augment=self.cfg.augment,
                            with_masks=True)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        target = batch["mask"].long().masked_fill(~batch["mask_valid"].bool()[:, None, None], IGNORE)  # (B, H, W)
        return {"seg": segmentation_loss(model(batch["image"]), target)}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"miou": score_split(model, self.val, next(model.parameters()).device)}


@torch.no_grad()
def predict_clip(model: nn.Module, frames: np.ndarray, device: torch.device) -> Tensor:
    """(T, H, W, 3) uint8 -> (T, K, H, W) softmax scores."""
    return torch.softmax(model(frames_to_tensor(frames, device)).float(), dim=1)


def score_split(model: nn.Module, feats: ArtifactReader, device: torch.device) -> float:
    acc = SemanticScores(len(feats.classes) + 1) if feats.task == "semantic" else BinaryMIoU()
    for i in range(len(feats)):
        clip = feats.clip(i, ("frames", "masks", "mask_valid"))
        masks = predict_clip(model, clip["frames"], device).argmax(dim=1).cpu().numpy().astype(np.uint8)
        keep = clip["mask_valid"]
        acc.update(masks[keep], clip["masks"][keep])
    return float(acc.result()["miou"])


def prediction_rows(model: nn.Module, feats: ArtifactReader, device: torch.device) -> Iterator[dict[str, Any]]:
    for i in range(len(feats)):
        clip = feats.clip(i, ("clip_id", "frames"))
        probs = predict_clip(model, clip["frames"], device)  # (T, K, H, W)
        t, a = probs.shape[0], len(feats.classes)
        yield {"clip_id": clip["clip_id"], "scores": probs.cpu().numpy().astype(np.float16),
               "masks": probs.argmax(dim=1).cpu().numpy().astype(np.uint8),
               "frame_classes": np.zeros((t, a), np.float32)}  # no audio: the upper bound is visual-only


def run(cfg: TrainSupervisedConfig) -> Path:
    seed_everything(cfg.optim.seed)  # before building the model: same seed, same initial weights
    device = resolve_device(cfg.device)
    train, val, test = (open_features(cfg.run, s) for s in ("train", "val", "test"))
    spec = base_spec(train, cfg.model)
    num_outputs = len(prediction_classes(train)) + 1
    model = SupervisedModel(spec, num_outputs, cfg.decoder_width)
    inputs = {feature_key("train"): train.artifact_id, feature_key("val"): val.artifact_id}
    prov = make_provenance("train-supervised", stage_config(cfg), cfg.optim.seed, inputs)
    prov["model_spec"] = {**spec, "num_outputs": num_outputs, "decoder_width": cfg.decoder_width}
    result = fit(SupervisedTask(cfg, model, val), cfg.optim, run_paths(cfg.run)["ckpt"], "supervised", prov,
                 resume=cfg.resume, device=cfg.device)
    ckpt = load_checkpoint(result.best_path, expect_stage="train-supervised", expect_kind="artifact")
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    for feats, split in ((val, "val"), (test, "test")):
        pprov = make_provenance("train-supervised", stage_config(cfg), cfg.optim.seed,
                                {feature_key(split): feats.artifact_id, "ckpt/supervised.pt": ckpt["artifact_id"]})
        write_predictions(Path(cfg.run) / cfg.out / f"{split}.h5", feats, prediction_rows(model, feats, device),
                          {"method": "fully supervised (upper bound)"}, pprov, f"supervised {split}")
    CONSOLE.print(f"[green]wrote[/green] {result.best_path}")
    return result.best_path
