"""`pcas train-supervised`: the FULLY SUPERVISED upper bound (paper Table 2's fully supervised rows).

The same visual backbone as PCAS with an FPN decoder (output stride 4, then bilinear to the frame: finer than the
pseudo-labels, so the bound is fair) trained with per-pixel cross-entropy on the ground-truth masks of the train split
(frames without a mask, e.g. S4 train frames 2-5, are ignored). This is the only stage that learns from training
masks (`pcas diagnose` reads them only to measure); it exists to measure how far weak supervision is from full
supervision. Best epoch by val mIoU; then it predicts val and test into supervised/{val,test}.h5.

The bound is audio-visual, as the paper's fully supervised AVSS models are: a frame alone cannot tell a sounding
object from a silent one of the same class (on the embedded data nothing in the picture does), so a visual-only
model is not an upper bound of an audio-visual task. An audio encoder of the same size as the listener reads the
frame's second and gives p(c sounds); the pixel scores factorise as p(pixel is c) * p(c sounds), i.e. the class
logits get log sigmoid(audio logit c) added (background unchanged). Full supervision also gives the per-second
sounding classes (from the masks), which train the audio branch directly with binary cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE
from pcas_cli.losses import IGNORE, segmentation_loss
from pcas_cli.metrics import BinaryMIoU, SemanticScores
from pcas_cli.provenance import make_provenance
from pcas_cli.seed import seed_everything
from pcas_cli.stages._common import (AudioModelConfig, VisualModelConfig, base_spec, build_audio, build_visual,
                                     feature_key, features_path, frames_to_tensor, open_features, resolve_device,
                                     run_paths, stage_config)
from pcas_cli.stages._predict import prediction_classes, write_predictions
from pcas_cli.training.checkpoint import load_checkpoint
from pcas_cli.training.data import AugmentConfig, FrameDataset
from pcas_cli.training.loop import OptimConfig, Resume, TrainTask, fit


@dataclass(frozen=True)
class TrainSupervisedConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder (reads features/, writes ckpt/supervised.pt, supervised/)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)  # same backbone as PCAS
    decoder_width: int = 128  # FPN decoder channels
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)  # audio branch (same size as the listener)
    audio_loss_weight: float = 1.0  # weight of the per-second sounding-class loss of the audio branch
    out: str = "supervised"  # prediction folder under the run
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                                                   epochs=20, warmup_epochs=1, batch_size=32,
                                                                   clip_grad_norm=1.0))  # optimisation
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.5, 1.0), hflip=0.5,
                                                                     time_mask=20, freq_mask=24))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: Resume = False  # continue an interrupted run: True, False or "auto" (training.loop.Resume)


@dataclass
class SupervisedOutput:
    logits: Tensor  # (B, K, H, W) pixel logits after the audio gate; channel 0 = background
    audio_logits: Tensor  # (B, K - 1) does class k (or, binary, anything) sound in the frame's second


class SupervisedModel(nn.Module):
    """FPN segmentation of the frame, gated per class by the audio of its second (module docstring)."""

    def __init__(self, spec: dict[str, Any], num_outputs: int, width: int) -> None:
        super().__init__()
        from pcas_cli.models import SegmentationModel

        self.seg = SegmentationModel(build_visual(spec), num_outputs, hidden=width)
        self.audio = build_audio({**spec, "num_classes": num_outputs - 1, "tvp": False})

    def forward(self, images: Tensor, fbank: Tensor) -> SupervisedOutput:
        """images (B, 3, H, W) in [0, 1], fbank (B, F, M) of each frame's second."""
        seg = self.seg(images)  # (B, K, H, W)
        audio_logits = self.audio(fbank[:, None]).logits[:, 0]  # (B, K - 1): each second on its own
        gate = F.logsigmoid(audio_logits)[:, :, None, None]  # log p(c sounds)
        return SupervisedOutput(torch.cat([seg[:, :1], seg[:, 1:] + gate], dim=1), audio_logits)


def sounding_targets(masks: Tensor, num_outputs: int) -> Tensor:
    """(B, H, W) ground-truth masks -> (B, K - 1) float: class k (binary: foreground) occupies some pixel."""
    return torch.stack([(masks == k).flatten(1).any(dim=1) for k in range(1, num_outputs)], dim=1).float()


class SupervisedTask(TrainTask):
    select_metric = "miou"

    def __init__(self, cfg: TrainSupervisedConfig, model: SupervisedModel, val: ArtifactReader,
                 masks_from: Path | None = None) -> None:
        self.cfg, self.model, self.val, self.masks_from = cfg, model, val, masks_from

    def train_dataset(self) -> FrameDataset:
        # masks_from: pseudo-labels (train-seg) instead of the ground-truth masks (upper bound)
        return FrameDataset(features_path(self.cfg.run, "train"), fields=("frames", "fbank"), augment=self.cfg.augment,
                            with_masks=True, masks_from=self.masks_from)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        valid = batch["mask_valid"].bool()  # (B,)
        target = batch["mask"].long().masked_fill(~valid[:, None, None], IGNORE)  # (B, H, W)
        out = model(batch["image"], batch["fbank"])
        k = out.logits.shape[1]
        audio = out.audio_logits.float()[valid]
        audio_loss = (F.binary_cross_entropy_with_logits(audio, sounding_targets(target[valid], k))
                      if len(audio) else out.audio_logits.sum() * 0.0)
        return {"seg": segmentation_loss(out.logits, target), "audio": self.cfg.audio_loss_weight * audio_loss}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"miou": score_split(model, self.val, next(model.parameters()).device)}


@torch.no_grad()
def predict_clip(model: nn.Module, frames: np.ndarray, fbank: np.ndarray, device: torch.device) -> SupervisedOutput:
    """(T, H, W, 3) uint8 frames and (T, F, M) fbank -> softmax pixel scores (T, K, H, W), audio logits (T, K-1)."""
    out = model(frames_to_tensor(frames, device), torch.from_numpy(fbank.astype(np.float32)).to(device))
    return SupervisedOutput(torch.softmax(out.logits.float(), dim=1), out.audio_logits.float())


def score_split(model: nn.Module, feats: ArtifactReader, device: torch.device) -> float:
    acc = SemanticScores(len(feats.classes) + 1) if feats.task == "semantic" else BinaryMIoU()
    for i in range(len(feats)):
        clip = feats.clip(i, ("frames", "fbank", "masks", "mask_valid"))
        out = predict_clip(model, clip["frames"], clip["fbank"], device)
        masks = out.logits.argmax(dim=1).cpu().numpy().astype(np.uint8)
        keep = clip["mask_valid"]
        acc.update(masks[keep], clip["masks"][keep])
    return float(acc.result()["miou"])


def prediction_rows(model: nn.Module, feats: ArtifactReader, device: torch.device) -> Iterator[dict[str, Any]]:
    for i in range(len(feats)):
        clip = feats.clip(i, ("clip_id", "frames", "fbank"))
        out = predict_clip(model, clip["frames"], clip["fbank"], device)
        probs = out.logits  # (T, K, H, W) softmax scores
        t, a = probs.shape[0], len(feats.classes)
        sounding = (torch.sigmoid(out.audio_logits).cpu().numpy().astype(np.float32) if feats.task == "semantic"
                    else np.zeros((t, a), np.float32))  # binary: the audio branch only says "something sounds"
        yield {"clip_id": clip["clip_id"], "scores": probs.cpu().numpy().astype(np.float16),
               "masks": probs.argmax(dim=1).cpu().numpy().astype(np.uint8), "frame_classes": sounding}


def fit_and_predict(cfg: TrainSupervisedConfig, stage: str, name: str, method: str,
                    masks_from: Path | None = None, extra_inputs: dict[str, str] | None = None) -> Path:
    """Train the audio-gated FPN segmenter on the train split's masks (ground truth, or `masks_from`), keep the best
    epoch by val mIoU, and predict val and test into <run>/<cfg.out>/. Returns the best checkpoint ckpt/<name>.pt."""
    seed_everything(cfg.optim.seed)  # before building the model: same seed, same initial weights
    device = resolve_device(cfg.device)
    train, val, test = (open_features(cfg.run, s) for s in ("train", "val", "test"))
    spec = {**base_spec(train, cfg.model), "audio": to_dict(cfg.audio)}
    num_outputs = len(prediction_classes(train)) + 1
    model = SupervisedModel(spec, num_outputs, cfg.decoder_width)
    inputs = {feature_key("train"): train.artifact_id, feature_key("val"): val.artifact_id, **(extra_inputs or {})}
    prov = make_provenance(stage, stage_config(cfg), cfg.optim.seed, inputs)
    prov["model_spec"] = {**spec, "num_outputs": num_outputs, "decoder_width": cfg.decoder_width}
    result = fit(SupervisedTask(cfg, model, val, masks_from), cfg.optim, run_paths(cfg.run)["ckpt"], name, prov,
                 resume=cfg.resume, device=cfg.device)
    ckpt = load_checkpoint(result.best_path, expect_stage=stage, expect_kind="artifact")
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    for feats, split in ((val, "val"), (test, "test")):
        pprov = make_provenance(stage, stage_config(cfg), cfg.optim.seed,
                                {feature_key(split): feats.artifact_id, f"ckpt/{name}.pt": ckpt["artifact_id"]})
        write_predictions(Path(cfg.run) / cfg.out / f"{split}.h5", feats, prediction_rows(model, feats, device),
                          {"method": method}, pprov, f"{cfg.out} {split}")
    CONSOLE.print(f"[green]wrote[/green] {result.best_path}")
    return result.best_path


def run(cfg: TrainSupervisedConfig) -> Path:
    return fit_and_predict(cfg, "train-supervised", "supervised", "fully supervised (upper bound)")
