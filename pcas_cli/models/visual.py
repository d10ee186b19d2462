"""Visual encoder: any timm backbone wrapped to give ToCo-style class token, patch tokens, logits and CAMs.

ViT-family models (a class/prefix token plus patch tokens) use the tokens after the final norm. CNNs (ResNet-50) and
hierarchical transformers (PVT-v2) have no class token: their "patch tokens" are the positions of the last feature map
and their "class token" is the global average of that map. Classification follows ToCo (method-facts §1): a
bias-free classifier W (C, D) scores the global-max-pooled patch tokens, and the CAM is ReLU(conv1x1(tokens, W)).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcas_cli.errors import PcasError, fail

# Named presets: preset name -> (timm model name, extra timm kwargs). Any raw timm name is accepted too.
# ViT presets get `img_size` and `dynamic_img_size=True` from `build_visual_encoder` so that multi-scale CAMs can
# run the same weights at other input sizes (the position embedding is resampled on the fly).
VISUAL_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # CPU-sized ViT: stride-8 patches keep a usable token grid on small frames; 6 blocks of width 192.
    "vit_tiny_p8": ("vit_tiny_patch16_224", {"patch_size": 8, "depth": 6}),
    # CPU-sized CNN: dilated last two stages keep the same 10 x 10 token grid at 80 px. From scratch it learns
    # handwritten-digit shape where ViT-tiny does not (results/avdigits-diagnostics.md); the AV-Digits preset uses it.
    "resnet18_os8": ("resnet18", {"output_stride": 8}),
    "vit_small": ("vit_small_patch16_224", {}),
    "vit_base": ("vit_base_patch16_224", {}),
    "resnet50": ("resnet50", {}),
    "pvt_v2_b2": ("pvt_v2_b2", {}),
}

# State-dict keys of timm classifier heads; mismatched shapes there are expected when class counts differ.
_HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.", "last_linear.", "pre_logits.")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisualOutput:
    """What the visual encoder returns for a batch of frames.

    Attributes:
        cls_token: (B, D) class token (ViT) or global-average-pooled feature map (CNN / PVT).
        patch_tokens: (B, N, D) final patch tokens, N = h * w, row-major over the grid.
        grid: (h, w) token grid.
        logits: (B, C) class scores of the global-max-pooled patch tokens (ToCo).
        pooled: (B, D) mean-pooled patch tokens: the TVP prompt v_t (paper §3.1).
    """

    cls_token: Tensor
    patch_tokens: Tensor
    grid: tuple[int, int]
    logits: Tensor
    pooled: Tensor


@dataclass
class LoadReport:
    """Outcome of loading a weights file into a timm backbone (for the stage to show the user)."""

    path: Path
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _is_token_model(model: nn.Module) -> bool:
    """ViT-like: tokens come out as (B, prefix + N, D) with a patch-embedding grid."""
    return hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed")


class VisualEncoder(nn.Module):
    """A timm backbone plus the ToCo bias-free classifier. Input: float images in [0, 1], (B, 3, H, W)."""

    def __init__(self, backbone: nn.Module, num_classes: int, name: str, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.num_classes = num_classes
        self.is_token_model = _is_token_model(backbone)
        self.embed_dim: int = backbone.num_features
        # Stride of the patch-token grid relative to the input (patch size for ViT, 32 for ResNet-50 / PVT-v2).
        self.stride: int = int(backbone.feature_info[-1]["reduction"])
        # Bias-free (C, D) classifier: logits on GMP tokens and CAM = ReLU(W * tokens) share it (method-facts §1).
        self.classifier = nn.Linear(self.embed_dim, num_classes, bias=False)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        # Preprocessing travels with the weights (segment-anything convention).
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.weights_report: LoadReport | None = None

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] (or uint8 in [0, 255]) -> backbone input normalised with its mean/std."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return (images - self.pixel_mean) / self.pixel_std

    def features(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Backbone tokens: class token (B, D), patch tokens (B, N, D) and grid (h, w)."""
        x = self.normalize(images)
        if self.is_token_model:
            tokens = self.backbone.forward_features(x)  # (B, prefix + N, D), after the final norm
            n_prefix = self.backbone.num_prefix_tokens
            patches = tokens[:, n_prefix:]  # (B, N, D)
            grid = tuple(self.backbone.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
            has_cls = getattr(self.backbone, "cls_token", None) is not None
            cls = tokens[:, 0] if has_cls else patches.mean(dim=1)
            return cls, patches, (int(grid[0]), int(grid[1]))
        fmap = self.backbone.forward_features(x)
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin
            fmap = fmap.permute(0, 3, 1, 2)
        b, d, h, w = fmap.shape
        patches = fmap.flatten(2).transpose(1, 2)  # (B, N, D)
        return patches.mean(dim=1), patches, (h, w)

    def forward(self, images: Tensor) -> VisualOutput:
        cls, patches, grid = self.features(images)
        logits = self.classifier(patches.amax(dim=1))  # (B, C): global max pooling, as ToCo
        # The TVP prompt is the *mean* of the patch tokens, not the max: the prompt should summarise the whole frame
        # (every visible object, a "pooled patch token" in paper §3.1), whereas GMP keeps only the few patches that
        # peak per channel and is already shaped to the classifier's decision.
        pooled = patches.mean(dim=1)  # (B, D)
        return VisualOutput(cls_token=cls, patch_tokens=patches, grid=grid, logits=logits, pooled=pooled)

    def cam(self, patch_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """ToCo CAM: (B, N, D) tokens -> (B, C, h, w) = ReLU(conv1x1(tokens, W_cls)); not normalised."""
        b, n, d = patch_tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not fill a {h}x{w} grid")
        cam = torch.einsum("bnd,cd->bcn", patch_tokens, self.classifier.weight)  # (B, C, N)
        return F.relu(cam).reshape(b, -1, h, w)

    def pyramid(self, images: Tensor) -> list[Tensor]:
        """Dense feature maps, fine to coarse, for a segmentation decoder: list of (B, C_i, H_i, W_i).

        ViT: one map (the final patch tokens). CNN / PVT: every stage of stride >= 4.
        """
        if self.is_token_model:
            _, patches, (h, w) = self.features(images)
            return [patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)]
        n_levels = len(self.pyramid_channels)
        return list(self.backbone.forward_intermediates(
            self.normalize(images), indices=n_levels, intermediates_only=True, output_fmt="NCHW"))

    @property
    def pyramid_channels(self) -> list[int]:
        """Channels of each `pyramid` level, fine to coarse."""
        if self.is_token_model:
            return [self.embed_dim]
        return [int(f["num_chs"]) for f in self.backbone.feature_info if f["reduction"] >= 4]

    @property
    def pyramid_reductions(self) -> list[int]:
        """Stride of each `pyramid` level relative to the input, fine to coarse."""
        if self.is_token_model:
            return [self.stride]
        return [int(f["reduction"]) for f in self.backbone.feature_info if f["reduction"] >= 4]


def _short(e: Exception) -> str:
    """First line of an exception, capped: hub errors are long and multi-line, PcasError messages are one line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:150]}"


def _create_timm(timm_name: str, img_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model without a classifier head; ViT-style models get img_size + dynamic_img_size."""
    base = dict(pretrained=pretrained, num_classes=0, **kwargs)
    try:
        sized = {"img_size": img_size, "dynamic_img_size": True, **base}
        try:
            return timm.create_model(timm_name, **sized)
        except TypeError:
            # CNNs (ResNet) and PVT-v2 take no img_size: they accept any input size already.
            return timm.create_model(timm_name, **base)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            known = ", ".join(VISUAL_PRESETS)
            raise PcasError(f"unknown visual backbone '{timm_name}' (presets: {known}, or any timm model name)") from e
        if pretrained:
            raise PcasError(f"could not download pretrained weights for {timm_name} (offline?); "
                            f"pass --weights FILE ({_short(e)})") from e
        raise
    except PcasError:
        raise
    except Exception as e:  # hub / network / cache errors come in many types
        if pretrained:
            raise PcasError(f"could not download pretrained weights for {timm_name} (offline?); "
                            f"pass --weights FILE ({_short(e)})") from e
        raise


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a raw state dict, or one nested under "state_dict" / "model", from .pt/.pth/.bin or .safetensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise fail(path, "weights file not found") from None
    except Exception as e:  # noqa: BLE001 - anything torch / safetensors raise on a bad file
        raise fail(path, f"cannot read weights ({_short(e)}); a file that pickles objects besides tensors (e.g. "
                         "DeiT's training args) must first be re-saved as a plain state dict") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise fail(path, "not a state dict (expected a mapping of parameter names to tensors)")
    return obj


def strip_prefixes(sd: dict[str, Tensor], model_keys: set[str],
                   prefixes: tuple[str, ...] = ("module.", "visual.", "backbone.", "model.", "encoder.")
                   ) -> dict[str, Tensor]:
    """Drop wrapper prefixes ("module." from DDP, "visual.backbone." from a pcas checkpoint, "backbone." from a saved
    VisualEncoder) when that helps match: from every key when all have it, else, when no key matches the model yet,
    keep only the keys under it (e.g. AST's "v." encoder beside its "mlp_head." classifier)."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
        elif not any(k in model_keys for k in sd) and any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def load_backbone_weights(model: nn.Module, path: Path) -> LoadReport:
    """Load a local timm-compatible state dict into `model` (not strict) and report what matched.

    The model family's timm `checkpoint_filter_fn` (when it has one) adapts the file first, e.g. ViT position
    embeddings are resampled to this model's grid. Classifier-head keys never need to match.

    Raises:
        PcasError: naming the file when it cannot be read or when none of its tensors fit the model.
    """
    path = Path(path)
    sd = read_state_dict(path)
    own = model.state_dict()
    sd = strip_prefixes(sd, set(own))
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception:  # the file may already be in this timm version's layout; use it as is
            pass
    usable: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for k, v in sd.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            usable[k] = v
        elif not k.startswith(_HEAD_PREFIXES):
            mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
    if not usable:
        raise fail(path, f"no tensor in this file matches backbone {type(model).__name__} "
                         f"({len(sd)} keys, e.g. {next(iter(sd), '-')!r})")
    # without its patch / position embedding a ViT starts half random: refuse rather than train on it silently
    embeddings = [m for m in mismatched if m.startswith(("patch_embed.", "pos_embed"))]
    if embeddings:
        raise fail(path, f"its embeddings do not fit this backbone even after timm's resampling ({embeddings[0]}); "
                         "check the backbone name and patch size")
    result = model.load_state_dict(usable, strict=False)
    unexpected = [k for k in sd if k not in own]
    return LoadReport(path=path, loaded=len(usable), missing=list(result.missing_keys), unexpected=unexpected,
                      mismatched=mismatched)


def build_visual_encoder(backbone: str, num_classes: int, img_size: int, pretrained: bool = False,
                         weights: Path | None = None, **timm_kwargs: Any) -> VisualEncoder:
    """Build a visual encoder from a preset name (`VISUAL_PRESETS`) or any timm model name.

    Args:
        backbone: preset or timm model name.
        num_classes: C, classes of the (bias-free) classifier, background excluded.
        img_size: training frame size; ViTs are built for it and still accept other sizes (dynamic_img_size).
        pretrained: fetch timm's pretrained weights from its hub (needs the network or a warm cache).
        weights: a local timm-compatible state-dict file, loaded after construction (`weights_report` says how).
        **timm_kwargs: override preset / timm kwargs (e.g. embed_dim=32, depth=1 for tests).

    Raises:
        PcasError: unknown name, unreadable / non-matching weights file, or pretrained weights unavailable.
    """
    timm_name, preset_kwargs = VISUAL_PRESETS.get(backbone, (backbone, {}))
    model = _create_timm(timm_name, img_size, pretrained, {**preset_kwargs, **timm_kwargs})
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", _IMAGENET_MEAN))
    std = tuple(cfg.get("std", _IMAGENET_STD))
    encoder = VisualEncoder(model, num_classes, backbone, mean, std)
    if weights is not None:
        encoder.weights_report = load_backbone_weights(model, Path(weights))
    return encoder

