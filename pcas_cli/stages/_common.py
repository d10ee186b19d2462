"""Pieces the PCAS stages share: model configs, the model bundle, checkpoint chaining and the audio cache.

Checkpoint chain (each file records the artifact ids of what it was made from; a stage refuses stale inputs):
    features/train.h5 -> visual.pt (Looking) -> tvp.pt (Listening) -> align.pt (CMC) -> refine.pt (CMPC + CMCC)
Every weights file stores a `model_spec` in its provenance, so any later stage rebuilds the exact architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pcas_cli.artifacts import ArtifactReader, read_features
from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError, fail
from pcas_cli.provenance import check_inputs

if TYPE_CHECKING:
    from pcas_cli.models.audio import AudioOutput


@dataclass(frozen=True)
class VisualModelConfig:
    backbone: str = "vit_tiny_p8"  # preset (vit_tiny_p8, vit_base, resnet50, pvt_v2_b2) or any timm model name
    pretrained: bool = False  # ask timm's hub for pretrained weights (needs the network)
    weights: str = ""  # local timm-compatible state-dict file to start from ("" = random init)
    overrides: dict = field(default_factory=dict)  # extra timm kwargs, e.g. {depth = 2} (tests, quick trials)


@dataclass(frozen=True)
class AudioModelConfig:
    embed_dim: int = 128  # token width D (AST-base: 768)
    depth: int = 3  # transformer blocks (AST-base: 12)
    num_heads: int = 4  # attention heads (AST-base: 12)
    patch_stride: tuple[int, int] = (16, 16)  # (freq, time) stride of the 16x16 patches; AST overlap = (10, 10)
    context: str = "second"  # "second": one sequence per second [prompt, patches]; "clip": one per clip, interleaved
    stem: str = "patch"  # "patch": AST's 16x16 patch convolution; "conv": early convolutions (models.audio.ConvStem);
    # "timm:<model>": a timm CNN's stride-16 feature map on the same token grid, e.g. "timm:resnet18" (TimmStem)
    input_norm: str = "none"  # "none": fbank as extracted (AST normalisation); "second": standardise each second
    head_pool: str = "mean"  # "mean": linear head on the mean patch token; "attention": per-class attention over patches
    # A local state dict to start from: AST (AudioSet), a timm ViT / DeiT (ImageNet, adapted as AST does) or a saved
    # audio encoder (models.audio.load_audio_weights); "" = from scratch
    weights: str = ""


@dataclass(frozen=True)
class ProjectionConfig:
    dim: int = 128  # width of CMC's shared audio-visual space
    hidden: int = 256  # hidden width of the projection MLPs


def stage_config(cfg: Any) -> dict[str, Any]:
    """The config recorded in provenance: everything but `resume`, which does not change any number computed."""
    from pcas_cli.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k != "resume"}


def resolve_device(name: str) -> torch.device:
    """This process's device for auto | cpu | cuda | cuda:N: under torchrun, "auto" and "cuda" are this rank's GPU
    (its LOCAL_RANK), so the caches a stage builds before training land where its rank trains."""
    from pcas_cli.training.distributed import env_world, resolve_device as resolve_for_rank

    return resolve_for_rank(name, env_world()[2])


def run_paths(run: Path) -> dict[str, Path]:
    """The run folder's fixed layout (DESIGN.md)."""
    run = Path(run)
    return {"features": run / "features", "ckpt": run / "ckpt", "pseudo": run / "pseudo", "crf": run / "crf",
            "metrics": run / "metrics", "baselines": run / "baselines", "seg": run / "seg"}


def features_path(run: Path, split: str) -> Path:
    return run_paths(run)["features"] / f"{split}.h5"


def open_features(run: Path, split: str) -> ArtifactReader:
    return read_features(features_path(run, split))


def feature_key(split: str) -> str:
    return f"features/{split}.h5"


# ---- model bundle ----------------------------------------------------------------------------------------------


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """x in the forward pass; its gradient times `scale` in the backward pass."""
    return x if scale == 1.0 else x.detach() + scale * (x - x.detach())


class PCASModel(nn.Module):
    """The modules PCAS trains. Holds the visual encoder and, from `align` on, the CMC projection heads.

    Not a pipeline of its own: stages call the parts they need. Audio tokens come from the (frozen) TVP audio encoder
    through `AudioCache`, because "Listening" is finished before alignment starts (Listening-before-Segmentation).
    """

    def __init__(self, visual: nn.Module, audio_dim: int | None = None, proj: ProjectionConfig | None = None) -> None:
        super().__init__()
        from pcas_cli.models import ProjectionHead

        self.visual = visual
        self.proj_audio = self.proj_patch = self.proj_cls = None
        if proj is not None and audio_dim is not None:
            d = visual.embed_dim
            self.proj_audio = ProjectionHead(audio_dim, proj.dim, proj.hidden)  # audio semantic token
            self.proj_patch = ProjectionHead(d, proj.dim, proj.hidden)  # per-patch video semantic tokens
            self.proj_cls = ProjectionHead(d, proj.dim, proj.hidden)  # video class token

    @property
    def has_projections(self) -> bool:
        return self.proj_audio is not None

    def forward(self, images: Tensor, audio_tokens: Tensor | None = None, crops: Tensor | None = None,
                head_grad_scale: float = 1.0) -> dict[str, Any]:
        """Everything one training step needs, in one call (so DistributedDataParallel sees a single forward).

        Args:
            images: (B, 3, H, W) frames in [0, 1].
            audio_tokens: (B, Da) the audio token a_t of each frame's second (frozen listener), or None.
            crops: (B, K, 3, h, w) local crops of each frame (CMCC), or None.
            head_grad_scale: the gradient that z_patch / z_video / z_cls send back into the encoder is multiplied
                by this (0: only the heads learn from them); the forward values are unchanged. z_crop is not scaled.

        Returns:
            "visual": VisualOutput; with projections and audio tokens also "z_audio" (B, P), "z_patch" (B, N, P),
            "z_video" (B, P) = max-pooled z_patch, "z_cls" (B, P); with crops "z_crop" (B, K, P).
        """
        out = self.visual(images)
        res: dict[str, Any] = {"visual": out}
        if self.has_projections and audio_tokens is not None:
            patch_tokens, cls_token = (scale_grad(t, head_grad_scale) for t in (out.patch_tokens, out.cls_token))
            res["z_audio"] = self.proj_audio(audio_tokens)
            res["z_patch"] = self.proj_patch(patch_tokens)
            # Video semantic token: max over patches, the multiple-instance pooling that lets a frame match a sound
            # made by one object among several (mean pooling would mix in silent objects and background).
            res["z_video"] = torch.nn.functional.normalize(res["z_patch"].amax(dim=1), dim=-1)
            res["z_cls"] = self.proj_cls(cls_token)
        if crops is not None and self.has_projections:
            b, k = crops.shape[:2]
            crop_out = self.visual(crops.flatten(0, 1))
            res["z_crop"] = self.proj_cls(crop_out.cls_token).view(b, k, -1)
        return res


def say_loaded(report: Any) -> None:
    """One line on what a weights file gave the model (models.LoadReport): a file that half fits shows here."""
    CONSOLE.print(f"weights {report.path}: {report.loaded} tensors loaded, {len(report.missing)} left as initialised, "
                  f"{len(report.unexpected)} unused, {len(report.mismatched)} of another shape", highlight=False)


def build_visual(spec: dict[str, Any]) -> nn.Module:
    """The visual encoder of a model spec; with `visual.weights` set, started from that file (said in one line)."""
    from pcas_cli.models import build_visual_encoder

    v = spec["visual"]
    weights = Path(v["weights"]) if v.get("weights") else None
    encoder = build_visual_encoder(v["backbone"], spec["num_classes"], spec["img_size"], pretrained=v["pretrained"],
                                   weights=weights, **v.get("overrides", {}))
    if encoder.weights_report is not None:
        say_loaded(encoder.weights_report)
    return encoder


def build_audio(spec: dict[str, Any]) -> nn.Module:
    """The audio encoder of a model spec; with `audio.weights` set, started from that file (said in one line)."""
    from pcas_cli.models import AudioEncoder, load_audio_weights

    a = spec["audio"]
    encoder = AudioEncoder(spec["num_classes"], embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"],
                           n_mels=spec["n_mels"], frames_per_second=spec["frames_per_second"],
                           patch_stride=tuple(a["patch_stride"]),
                           visual_dim=spec["visual_dim"] if spec["tvp"] else None, max_seconds=spec["max_seconds"],
                           context=a["context"], stem=a.get("stem", "patch"), input_norm=a.get("input_norm", "none"),
                           head_pool=a.get("head_pool", "mean"))
    if a.get("weights"):
        encoder.weights_report = load_audio_weights(encoder, Path(a["weights"]))
        say_loaded(encoder.weights_report)
    return encoder


def data_spec(features: ArtifactReader) -> dict[str, Any]:
    """Architecture facts a features artifact fixes (classes, frame size, fbank shape, clip length)."""
    return {"num_classes": len(features.classes), "classes": list(features.classes), "img_size": features.dims["H"],
            "n_mels": features.dims["M"], "frames_per_second": features.dims["F"], "max_seconds": features.dims["T"],
            "task": features.task}


def base_spec(features: ArtifactReader, visual: VisualModelConfig) -> dict[str, Any]:
    """Architecture facts every later stage needs to rebuild models (stored in each checkpoint's provenance)."""
    from pcas_cli.config import to_dict

    return {**data_spec(features), "visual": to_dict(visual)}


def audio_architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a listener's model_spec that `build_audio` reads: two listeners with equal architectures can
    exchange weights (a teacher and its student)."""
    keys = ("num_classes", "n_mels", "frames_per_second", "max_seconds", "tvp") + (
        ("visual_dim",) if spec["tvp"] else ())
    # Fields added later default as `build_audio` reads them, so older checkpoints still match their students.
    audio = {"stem": "patch", "input_norm": "none", "head_pool": "mean", **spec["audio"]}
    audio.pop("weights", None)  # where a listener started from, not what it is
    return {**{k: spec[k] for k in keys}, "audio": audio}


def load_weights(path: Path, stage: str | tuple[str, ...]) -> dict[str, Any]:
    from pcas_cli.training.checkpoint import load_checkpoint

    return load_checkpoint(path, expect_stage=stage, expect_kind="artifact")


def check_fresh(ckpt_path: Path, ckpt: dict[str, Any], current_inputs: dict[str, str]) -> None:
    """Refuse a checkpoint made from inputs that have since changed (stale)."""
    check_inputs(ckpt_path, ckpt["provenance"].get("inputs", {}), current_inputs)


def load_state(module: nn.Module, state: dict[str, Tensor], prefix: str, path: Path) -> None:
    """Load the entries of `state` under `prefix` (e.g. "visual.") into `module`, strictly."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise fail(path, f"holds no '{prefix.rstrip('.')}' weights")
    try:
        module.load_state_dict(sub)
    except RuntimeError as e:
        raise fail(path, f"weights do not fit the model ({str(e).splitlines()[0]})") from None


# The stages whose checkpoints hold a PCAS model bundle (visual encoder, classifier, optional projection heads).
VISUAL_STAGES = ("train-visual", "align", "refine")


def visual_from_checkpoint(path: Path, stage: str | tuple[str, ...] = VISUAL_STAGES
                           ) -> tuple[PCASModel, dict[str, Any]]:
    """Rebuild the PCAS model bundle saved by `stage` (by default any of train-visual, align, refine) and load its
    weights."""
    ckpt = load_weights(path, stage)
    spec = ckpt["provenance"]["model_spec"]
    visual = build_visual({**spec, "visual": {**spec["visual"], "weights": "", "pretrained": False}})
    proj = ProjectionConfig(**spec["proj"]) if spec.get("proj") else None
    model = PCASModel(visual, spec.get("audio_dim"), proj)
    missing = set(model.state_dict()) ^ set(ckpt["model"])
    if missing:
        raise fail(path, f"weights do not fit the recorded architecture ({sorted(missing)[:3]} ...)")
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def audio_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = load_weights(path, "train-tvp")
    spec = ckpt["provenance"]["model_spec"]
    audio = build_audio({**spec, "audio": {**spec["audio"], "weights": ""}})  # the checkpoint holds the weights
    load_state(audio, ckpt["model"], "audio.", path)
    return audio, ckpt


# ---- frozen "Listening" outputs --------------------------------------------------------------------------------


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def visual_prompts(visual: nn.Module, frames: Tensor, batch: int = 64) -> Tensor:
    """(T, 3, H, W) -> (T, Dv): the pooled patch token v_t of each frame, the TVP prompt (paper §3.1)."""
    out = [visual(frames[i:i + batch]).pooled for i in range(0, len(frames), batch)]
    return torch.cat(out)


def hear(audio: nn.Module, clip: dict[str, np.ndarray], prompt: Tensor | None, device: torch.device) -> AudioOutput:
    """The audio encoder's output on one clip (its "fbank" and "frame_valid"), prompted by (1, T, Dv) TVP prompts
    or None."""
    fbank = torch.from_numpy(clip["fbank"].astype(np.float32)).to(device)[None]  # (1, frames, mel)
    valid = torch.from_numpy(clip["frame_valid"]).to(device)[None]  # (1, T)
    return audio(fbank, visual_prompt=prompt, second_valid=valid)


@dataclass
class AudioCache:
    """Per-second audio tokens a_t and sounding-class probabilities of every clip of one split (frozen listener).

    Small: N x T x (D + C) floats. Built once per stage from tvp.pt (+ the visual.pt that prompts it).
    """

    tokens: Tensor  # (N, T, D) float32
    probs: Tensor  # (N, T, C) float32, sigmoid of the per-second logits
    clip_ids: list[str]


@torch.no_grad()
def build_audio_cache(features: ArtifactReader, audio: nn.Module, prompt_visual: nn.Module | None,
                      device: torch.device, desc: str = "listening", prompt_shift: int = 0) -> AudioCache:
    """Run the frozen TVP audio encoder over every clip (prompts from the frozen Looking encoder when TVP is on).

    prompt_shift != 0 is a diagnostic (`pcas diagnose --set prompt_check=true`): clip i is prompted with the frames of
    clip (i + prompt_shift) mod N, i.e. with another scene, to measure how much the listener uses what it sees."""
    audio = audio.to(device).eval()
    if prompt_visual is not None:
        prompt_visual = prompt_visual.to(device).eval()
    tokens, probs = [], []
    with progress(transient=True) as bar:
        task = bar.add_task(desc, total=len(features), info="")
        for i in range(len(features)):
            clip = features.clip(i, ("frames", "fbank", "frame_valid"))
            prompt = None
            if prompt_visual is not None:
                other = (i + prompt_shift) % len(features)
                frames = clip["frames"] if other == i else features.read("frames", other)
                prompt = visual_prompts(prompt_visual, frames_to_tensor(frames, device))[None]
            out = hear(audio, clip, prompt, device)
            tokens.append(out.tokens[0].float().cpu())
            probs.append(torch.sigmoid(out.logits[0].float()).cpu())
            bar.advance(task)
    return AudioCache(torch.stack(tokens), torch.stack(probs), features.clip_ids())


def listener(tvp_ckpt: Path, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """The frozen audio encoder of tvp.pt and, when it was trained with TVP, the Looking encoder that prompts it."""
    audio, ckpt = audio_from_checkpoint(tvp_ckpt)
    prompt_visual = None
    if ckpt["provenance"]["model_spec"]["tvp"]:
        visual_ckpt = Path(ckpt["provenance"]["visual_checkpoint"])
        model, vck = visual_from_checkpoint(visual_ckpt, "train-visual")
        check_fresh(tvp_ckpt, ckpt, {"ckpt/visual.pt": vck["artifact_id"]})
        prompt_visual = model.visual
    return audio.to(device), prompt_visual, ckpt


def listener_names(listener: str, co_listener: str) -> tuple[str, ...]:
    """The checkpoints `listen` combines: the listener, then the co-listener when set (and different)."""
    return (listener,) + ((co_listener,) if co_listener and co_listener != listener else ())


def listen(ckpt_dir: Path, names: Sequence[str], features: ArtifactReader, device: torch.device, split: str,
           fresh_against: dict[str, str] | None = None) -> tuple[AudioCache, dict[str, str]]:
    """What the frozen listeners hear in one split: audio tokens a_t of the first listener, and per-second class
    probabilities p_t = the geometric mean over all listeners (a product of experts: a class sounds where every
    listener hears it).

    Why two: the TVP listener reads the frame, and in silent seconds it reports the visible objects (on the embedded
    data it hears a class in 75% of silent val seconds; the audio-only AST in 19%). Confirming it by an audio-only
    listener keeps TVP's recognition and removes the hallucinations (README, "Which classes sound").

    Each checkpoint is checked against `fresh_against` (refused when stale). Returns the cache and
    {"ckpt/<name>.pt": artifact id} for provenance.
    """
    if not names:
        raise PcasError("listen: no listener given")
    caches, ids = [], {}
    for name in names:
        path = ckpt_dir / f"{name}.pt"
        audio, prompt_visual, ckpt = listener(path, device)
        if fresh_against:
            # An audio-only listener never read ckpt/visual.pt (listeners made before this was so recorded it anyway)
            current = fresh_against if prompt_visual is not None else {
                k: v for k, v in fresh_against.items() if k != "ckpt/visual.pt"}
            check_fresh(path, ckpt, current)
        ids[f"ckpt/{name}.pt"] = ckpt["artifact_id"]
        caches.append(build_audio_cache(features, audio, prompt_visual, device,
                                        desc=f"listening ({split}, {name})"))
    probs = torch.stack([c.probs for c in caches]).clamp_min(1e-12).log().mean(dim=0).exp()  # (N, T, C)
    return AudioCache(caches[0].tokens, probs, caches[0].clip_ids), ids


def frame_classes_from_masks(masks: np.ndarray, mask_valid: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """(T, C) ground-truth sounding classes per frame, for SCORING the audio classifier only (never training).

    Semantic masks give the classes directly. Binary masks only say whether something sounds: the frame's classes are
    then the video labels when the mask is non-empty (exact for single-source S4; an upper set for MS3).
    """
    t, c = masks.shape[0], labels.shape[0]
    out = np.zeros((t, c), np.uint8)
    valid = np.asarray(mask_valid, dtype=bool)
    if task == "semantic":
        out[valid] = classes_in_masks(masks[valid], c)
    else:
        out[valid & masks.reshape(t, -1).any(axis=1)] = labels
    return out


def second_targets(features: ArtifactReader) -> tuple[np.ndarray, np.ndarray]:
    """Per-second sounding classes from a split's masks, for SCORING only: (N, T, C) bool, and (N, T) bool "frame t
    has a mask"."""
    targets, has = [], []
    for i in range(len(features)):
        c = features.clip(i, ("masks", "mask_valid", "labels"))
        targets.append(frame_classes_from_masks(c["masks"], c["mask_valid"], c["labels"], features.task))
        has.append(c["mask_valid"])
    return np.stack(targets).astype(bool), np.stack(has).astype(bool)


def classes_in_masks(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Classes present in each class-index map (class k -> value k + 1, 0 = none; other values ignored).

    (T, H, W) -> (T, C) bool.
    """
    present = np.zeros((len(masks), num_classes + 1), dtype=bool)
    for t, frame in enumerate(masks):
        values = np.unique(frame)
        present[t, values[values <= num_classes]] = True
    return present[:, 1:]
