"""AST-style audio encoder over per-second fbank patches, with Temporal Visual Prompting (paper §3.1).

Each second of log-mel fbank (F frames x M mels) is laid out as AST does (method-facts §6, §10): a 1-channel image
(M, F) with frequency as height and time as width, cut into 16x16 patches by a Conv2d (stride 10 = AST overlap, 16 =
no overlap). Tokens get a learned (freq, time) position embedding shared by all seconds plus a learned embedding of
the second they belong to. TVP inserts the visual pooled patch token v_t of frame t, projected into the audio width,
as one prompt token beside second t's audio tokens: after the prefix (cls) token and after the position embedding is
added, the slot VPT uses (method-facts §6, "Prompt slot"). The per-second output a_t is the mean of second t's audio
patch tokens after the final norm; a linear head on a_t classifies that second (`head_pool="mean"`), or, with
`head_pool="attention"`, each class pools its own patches (decision-level attention, see `ClassAttentionHead`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from pcas_cli.errors import PcasError, fail
from pcas_cli.models.visual import LoadReport, read_state_dict, strip_prefixes

Context = Literal["clip", "second"]

# Named sizes (literal hyperparameters, builder style); any field can still be overridden.
AUDIO_PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: non-overlapping patches keep sequences short (8 x 6 = 48 patches per second at 128 x 100).
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_stride": (16, 16)},
    "ast_small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_stride": (10, 10)},
    # AST-base: ViT-B width/depth, 16x16 patches with stride 10 (12 x 9 = 108 patches per second).
    "ast_base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_stride": (10, 10)},
}


@dataclass
class AudioOutput:
    """Per-second audio outputs (values at invalid seconds are computed but meaningless: mask them).

    Attributes:
        tokens: (B, T, D) a_t, mean of second t's audio patch tokens after the final norm.
        logits: (B, T, C) per-second class scores.
    """

    tokens: Tensor
    logits: Tensor


@dataclass
class SequenceLayout:
    """Where each token sits in one transformer sequence (indices along the sequence axis).

    For context "clip" there is one sequence per clip; for "second" one per second and the indices of second t are
    those of row t (the same for every t). `prompt_index` is None when TVP is off.

    Attributes:
        cls_index: index of the cls token (always 0).
        prompt_index: (T,) index of each second's prompt token, or None.
        patch_index: (T, P) indices of each second's audio patch tokens.
        length: sequence length.
    """

    cls_index: int
    prompt_index: Tensor | None
    patch_index: Tensor
    length: int


def patch_grid(n_mels: int, frames: int, patch_size: int, stride: tuple[int, int]) -> tuple[int, int]:
    """(freq, time) patch counts of one second: AST's `(size - 16) // stride + 1` per axis (method-facts §10)."""
    if n_mels < patch_size or frames < patch_size:
        raise ValueError(f"a second of fbank ({frames} frames x {n_mels} mels) is smaller than a {patch_size}px patch")
    return (n_mels - patch_size) // stride[0] + 1, (frames - patch_size) // stride[1] + 1


class ConvStem(nn.Module):
    """Early convolutions instead of one patch x patch convolution (Xiao et al. 2021, "Early Convolutions Help
    Transformers See Better"): two 3x3 stride-2 convolutions (GroupNorm, GELU), then a (patch/4)-sized one with
    stride patch/4 to D channels. The tokens cover the same 16 x 16 fbank cells on the same grid as the patch stem
    (8 x 6 per second at 128 mels x 100 frames), so positions, TVP prompts and everything downstream are unchanged;
    from scratch it learns from far fewer examples. GroupNorm, not BatchNorm: padded (all-zero) seconds of short
    clips must not shift the statistics of real ones.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, width: int = 32) -> None:
        super().__init__()
        if patch_size % 4:
            raise ValueError(f"the conv stem needs a patch size divisible by 4, got {patch_size}")
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, width), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, 2 * width), nn.GELU(),
            nn.Conv2d(2 * width, embed_dim, patch_size // 4, stride=patch_size // 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, M, F) -> (N, D, M', F')."""
        return self.layers(x)


class TimmStem(nn.Module):
    """Any timm CNN as the token stem (`stem = "timm:<model>"`, e.g. "timm:resnet18"): its stride-16 feature map,
    average-pooled onto the patch grid and projected to D by a 1x1 convolution, so positions, TVP prompts and
    everything downstream stay as with the patch stem. From scratch, a ResNet learns spoken digits from per-second
    labels in a few hundred steps where the 3-block transformer on 16x16 patches barely moves (AV-Digits:
    results/avdigits-diagnostics.md). Random init; 1 input channel.

    All-zero inputs (the padding seconds of short clips) skip the CNN and give all-zero features, so they never
    enter BatchNorm statistics; every other second is unaffected by what it is batched with in eval mode.
    """

    def __init__(self, name: str, embed_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        try:
            probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=1)
        except RuntimeError as e:  # unknown name, or a model without a features_only mode (e.g. a ViT)
            raise PcasError(f"audio.stem 'timm:{name}': not a timm CNN with feature maps ({e})") from e
        reductions = probe.feature_info.reduction()
        finest = [i for i, r in enumerate(reductions) if r <= 16]
        if not finest:
            raise PcasError(f"audio.stem 'timm:{name}': no feature map at stride <= 16 (strides {reductions})")
        level = finest[-1]  # the coarsest map at stride <= 16: deepest features that still cover the patch grid
        self.body = timm.create_model(name, pretrained=False, features_only=True, in_chans=1, out_indices=(level,))
        channels = self.body.feature_info.channels()[-1]
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Conv2d(channels, embed_dim, 1)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, M, F) -> (N, D, grid_f, grid_t)."""
        real = x.flatten(1).abs().amax(dim=1) > 0  # (N,) False for padding seconds
        feats = x.new_zeros(x.shape[0], self.channels, *self.pool.output_size)
        if bool(real.any()):
            feats[real] = self.pool(self.body(x[real])[-1]).to(feats.dtype)
        return self.proj(feats)


class ClassAttentionHead(nn.Module):
    """Per-class attention pooling of one second's patch logits (decision-level attention of weakly labelled sound
    event detection, Kong et al. 2019; beyond the paper, results/avdigits-diagnostics.md).

    A linear head on the mean patch token sees one average of everything sounding in the second; when two words are
    spoken over each other their patches are averaged into one vector. Here every patch p gets class logits l_{p,c}
    and attention scores s_{p,c}, and class c's logit is the attention-weighted mean of its patch logits:

        logit_c = sum_p softmax_p(s_{p,c}) * l_{p,c}

    so each class can read the time-frequency patches where it is loudest, independently of the other classes.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classify = nn.Linear(embed_dim, num_classes)
        self.attend = nn.Linear(embed_dim, num_classes)

    def forward(self, patches: Tensor) -> Tensor:
        """(..., P, D) patch tokens -> (..., C) logits."""
        weights = self.attend(patches).softmax(dim=-2)  # (..., P, C), sums to 1 over patches
        return (weights * self.classify(patches)).sum(dim=-2)


class AudioEncoder(nn.Module):
    """AST-style transformer classifying each second of a clip, optionally prompted by the visual token of its frame.

    Args:
        num_classes: C.
        embed_dim: D, token width.
        depth: number of transformer blocks.
        num_heads: attention heads.
        n_mels: M, mel bins per frame.
        frames_per_second: F, fbank frames per second (the input's third axis must equal it).
        patch_stride: (freq, time) stride of the 16x16 patch convolution: (10, 10) = AST overlap, (16, 16) = none.
        visual_dim: Dv, width of the visual prompt; None builds no prompt projection (TVP unavailable).
        max_seconds: longest clip (size of the per-second embedding table).
        context: "clip" = one sequence per clip, prompts interleaved with their second's tokens; "second" = one
            sequence per second.
        mlp_ratio: block MLP width / D.
        drop_path: stochastic depth rate of the last block (linearly increasing from 0).
        patch_size: patch side in fbank bins (16 in AST).
        stem: "patch" = AST's single patch convolution; "conv" = `ConvStem` (non-overlapping patches only);
            "timm:<model>" = a timm CNN's feature map on the same grid (`TimmStem`).
        input_norm: "none" = the fbank as extracted (AST's fixed data-set normalisation); "second" = standardise
            each second on its own (mean and std over its frames and mel bins), like per-utterance normalisation in
            speech recognition: it removes the clip's noise level and recording gain, which otherwise dominate the
            input when a from-scratch encoder has little data (AV-Digits: SNR 5-20 dB, levels vary per speaker).
        head_pool: "mean" = a linear head on a_t; "attention" = `ClassAttentionHead` on the second's patch tokens.
            a_t (the token CMC aligns) is the mean patch token either way.
    """

    def __init__(self, num_classes: int, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 n_mels: int = 128, frames_per_second: int = 100, patch_stride: tuple[int, int] = (16, 16),
                 visual_dim: int | None = None, max_seconds: int = 10, context: Context = "clip",
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, patch_size: int = 16, stem: str = "patch",
                 input_norm: str = "none", head_pool: str = "mean") -> None:
        super().__init__()
        if context not in ("clip", "second"):
            raise ValueError(f"context must be 'clip' or 'second', got {context!r}")
        self.context = context
        self.n_mels = n_mels
        self.frames_per_second = frames_per_second
        self.max_seconds = max_seconds
        self.embed_dim = embed_dim
        if input_norm not in ("none", "second"):
            raise ValueError(f"input_norm must be 'none' or 'second', got {input_norm!r}")
        self.input_norm = input_norm
        self.grid = patch_grid(n_mels, frames_per_second, patch_size, tuple(patch_stride))
        if stem == "patch":
            self.patch_embed: nn.Module = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=tuple(patch_stride))
        elif stem == "conv":
            if tuple(patch_stride) != (patch_size, patch_size):
                raise ValueError(f"the conv stem makes non-overlapping tokens; patch_stride must be "
                                 f"({patch_size}, {patch_size}), got {tuple(patch_stride)}")
            self.patch_embed = ConvStem(embed_dim, patch_size)
        elif stem.startswith("timm:"):
            self.patch_embed = TimmStem(stem.removeprefix("timm:"), embed_dim, self.grid)
        else:
            raise ValueError(f"stem must be 'patch', 'conv' or 'timm:<model>', got {stem!r}")
        out = self.patch_embed(torch.zeros(1, 1, n_mels, frames_per_second))  # (1, D, f_dim, t_dim)
        if tuple(out.shape[-2:]) != self.grid:
            raise ValueError(f"the {stem} stem gives a {tuple(out.shape[-2:])} token grid on {n_mels} x "
                             f"{frames_per_second} fbank, not the patch grid {self.grid}")
        self.num_patches = self.grid[0] * self.grid[1]  # P, patches per second
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))  # (freq, time) patch positions
        self.time_embed = nn.Parameter(torch.zeros(1, max_seconds, embed_dim))  # which second of the clip
        # TVP projection: visual width -> audio width, normalised so the prompt's scale matches the audio tokens.
        self.prompt_proj = (nn.Sequential(nn.Linear(visual_dim, embed_dim), nn.LayerNorm(embed_dim))
                            if visual_dim is not None else None)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)
        if head_pool not in ("mean", "attention"):
            raise ValueError(f"head_pool must be 'mean' or 'attention', got {head_pool!r}")
        self.head_pool = head_pool
        self.head: nn.Module = (nn.Linear(embed_dim, num_classes) if head_pool == "mean"
                                else ClassAttentionHead(embed_dim, num_classes))
        self.weights_report: LoadReport | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.cls_pos, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def sequence_layout(self, seconds: int, with_prompt: bool) -> SequenceLayout:
        """Token positions in the assembled sequence for a clip of `seconds` seconds (see `SequenceLayout`)."""
        p = self.num_patches
        step = p + int(with_prompt)  # tokens per second
        if self.context == "clip":
            starts = 1 + step * torch.arange(seconds)  # first token of each second
        else:
            starts = torch.ones(seconds, dtype=torch.long)
        prompt_index = starts if with_prompt else None
        patch_index = starts[:, None] + int(with_prompt) + torch.arange(p)[None, :]  # (T, P)
        length = 1 + step * (seconds if self.context == "clip" else 1)
        return SequenceLayout(cls_index=0, prompt_index=prompt_index, patch_index=patch_index, length=length)

    def patch_tokens(self, fbank: Tensor) -> Tensor:
        """(B, T, F, M) fbank -> (B, T, P, D) patch tokens with (freq, time) and per-second embeddings added."""
        b, t, f, m = fbank.shape
        if f != self.frames_per_second or m != self.n_mels:
            raise ValueError(f"fbank has {f} frames x {m} mels per second; this encoder was built for "
                             f"{self.frames_per_second} x {self.n_mels}")
        if t > self.max_seconds:
            raise ValueError(f"clip has {t} seconds; this encoder handles at most {self.max_seconds}")
        x = fbank.reshape(b * t, f, m).transpose(1, 2).unsqueeze(1)  # (B*T, 1, M, F): AST's freq x time image
        if self.input_norm == "second":
            mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
            x = (x - mean) / (std + 1e-3)  # padded all-zero seconds stay zero
        x = self.patch_embed(x.to(self.pos_embed.dtype))  # (B*T, D, f_dim, t_dim)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B*T, P, D)
        return x.reshape(b, t, self.num_patches, -1) + self.time_embed[:, :t, None, :]  # (B, T, P, D)

    def prompt_tokens(self, visual_prompt: Tensor) -> Tensor:
        """(B, T, Dv) visual pooled tokens -> (B, T, D) prompt tokens.

        The per-second embedding is added to the prompt too: in "clip" context self-attention is permutation
        invariant, so without it nothing would tie prompt t to second t except the raw content.
        """
        if self.prompt_proj is None:
            raise ValueError("this audio encoder was built without visual_dim: it cannot take visual prompts")
        t = visual_prompt.shape[1]
        return self.prompt_proj(visual_prompt) + self.time_embed[0, :t]  # (B, T, D)

    def assemble(self, fbank: Tensor, visual_prompt: Tensor | None = None) -> tuple[Tensor, SequenceLayout]:
        """Build the token sequence(s): (B, L, D) for "clip", (B*T, L, D) for "second", plus the layout."""
        patches = self.patch_tokens(fbank)  # (B, T, P, D)
        b, t, p, d = patches.shape
        if visual_prompt is not None:
            if visual_prompt.shape[:2] != (b, t):
                raise ValueError(f"visual prompt {tuple(visual_prompt.shape)} does not match fbank (B={b}, T={t})")
            prompts = self.prompt_tokens(visual_prompt.to(patches.dtype))  # (B, T, D)
            patches = torch.cat([prompts[:, :, None, :], patches], dim=2)  # (B, T, 1+P, D): prompt before its second
        n_seq = b if self.context == "clip" else b * t
        body = patches.reshape(n_seq, -1, d)  # clip: (B, T*(1+P), D); second: (B*T, 1+P, D)
        cls = (self.cls_token + self.cls_pos).expand(n_seq, -1, -1)
        seq = torch.cat([cls, body], dim=1)
        return seq, self.sequence_layout(t, visual_prompt is not None)

    def _key_mask(self, second_valid: Tensor, layout: SequenceLayout) -> Tensor:
        """(B, T) valid seconds -> (B, 1, 1, L) attention mask, True = may be attended to. cls is always valid, so
        no query ever has all keys masked (no NaN) even for a clip without valid seconds."""
        b, t = second_valid.shape
        keep = torch.ones(b, layout.length, dtype=torch.bool, device=second_valid.device)
        keep[:, layout.patch_index.reshape(-1).to(keep.device)] = second_valid[:, :, None].expand(
            -1, -1, layout.patch_index.shape[1]).reshape(b, -1)
        if layout.prompt_index is not None:
            keep[:, layout.prompt_index.to(keep.device)] = second_valid
        return keep[:, None, None, :]

    def forward(self, fbank: Tensor, visual_prompt: Tensor | None = None,
                second_valid: Tensor | None = None) -> AudioOutput:
        """Classify each second.

        Args:
            fbank: (B, T, F, M) normalised log-mel fbank.
            visual_prompt: (B, T, Dv) visual pooled patch token of each second's frame, or None (TVP off).
            second_valid: (B, T) bool; in "clip" context invalid seconds are hidden from attention.

        Returns:
            `AudioOutput` with tokens (B, T, D) and logits (B, T, C).
        """
        b, t = fbank.shape[:2]
        seq, layout = self.assemble(fbank, visual_prompt)
        mask = None
        if self.context == "clip" and second_valid is not None and not bool(second_valid.all()):
            mask = self._key_mask(second_valid.bool(), layout)
        for block in self.blocks:
            seq = block(seq, attn_mask=mask)
        seq = self.norm(seq)
        if self.context == "clip":
            idx = layout.patch_index.to(seq.device)  # (T, P)
            patches = seq[:, idx.reshape(-1)].reshape(b, t, idx.shape[1], -1)  # (B, T, P, D)
        else:
            patches = seq[:, layout.patch_index[0, 0]:].reshape(b, t, self.num_patches, -1)  # (B, T, P, D)
        tokens = patches.mean(dim=2)  # (B, T, D): a_t, the pooled audio patch token
        logits = self.head(tokens if self.head_pool == "mean" else patches)  # (B, T, C)
        return AudioOutput(tokens=tokens, logits=logits)


def _fit_grid(grid_pos: Tensor, size: tuple[int, int]) -> Tensor:
    """(1, D, h, w) position grid -> (1, D, *size): centre-cut axes that are too long, interpolate short ones (AST)."""
    f, t = size
    h, w = grid_pos.shape[-2:]
    if h > f:
        grid_pos = grid_pos[..., (h - f) // 2:(h - f) // 2 + f, :]
    if w > t:
        grid_pos = grid_pos[..., (w - t) // 2:(w - t) // 2 + t]
    if tuple(grid_pos.shape[-2:]) != (f, t):
        grid_pos = F.interpolate(grid_pos, size=(f, t), mode="bilinear", align_corners=False)
    return grid_pos


def _from_vit_layout(sd: dict[str, Tensor], encoder: AudioEncoder) -> dict[str, Tensor]:
    """Map a timm ViT / DeiT / AST checkpoint onto this encoder, the way AST initialises from ImageNet
    (method-facts §10): the RGB patch kernel is summed into one channel, the position grid is centre-cut or
    interpolated to one second's (freq, time) grid, and the prefix position goes to the cls token. Blocks and the
    final norm are timm modules with the same names. The per-second embedding, prompt projection and head stay new.
    """
    out = {k: v for k, v in sd.items() if k.startswith(("blocks.", "norm."))}
    if "patch_embed.proj.weight" in sd:
        out["patch_embed.weight"] = sd["patch_embed.proj.weight"].sum(dim=1, keepdim=True)  # (D, 1, 16, 16)
    if "patch_embed.proj.bias" in sd:
        out["patch_embed.bias"] = sd["patch_embed.proj.bias"]
    if "cls_token" in sd:
        out["cls_token"] = sd["cls_token"]
    pos = sd.get("pos_embed")
    if pos is not None:
        n_prefix = int("cls_token" in sd) + int("dist_token" in sd)  # AST / DeiT-distilled carry two prefix tokens
        n_grid = pos.shape[1] - n_prefix
        side = int(round(n_grid ** 0.5))
        f_dim = encoder.grid[0]
        if side * side == n_grid:
            src = (side, side)  # ImageNet ViT
        elif n_grid % f_dim == 0:
            src = (f_dim, n_grid // f_dim)  # AST AudioSet: (freq, time) = (12, 101)
        else:
            src = None
        if src is not None:
            grid = pos[:, n_prefix:].transpose(1, 2).reshape(1, -1, *src)  # (1, D, h, w)
            out["pos_embed"] = _fit_grid(grid, encoder.grid).flatten(2).transpose(1, 2)  # (1, P, D)
            if n_prefix:
                out["cls_pos"] = pos[:, :1]
    return out


def load_audio_weights(encoder: AudioEncoder, path: Path) -> LoadReport:
    """Load weights into the audio encoder (not strict) and report what matched.

    Accepts a saved `AudioEncoder` state dict, or a timm ViT / DeiT (ImageNet) or AST (AudioSet, keys under
    "module.v.") checkpoint, which is adapted as AST does (see `_from_vit_layout`).

    Raises:
        PcasError: naming the file when it cannot be read or none of its tensors fit.
    """
    path = Path(path)
    sd = read_state_dict(path)
    own = encoder.state_dict()
    sd = strip_prefixes(sd, set(own), ("module.", "v.", "audio_encoder.", "audio.", "model."))
    if "patch_embed.proj.weight" in sd:
        sd = _from_vit_layout(sd, encoder)
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                  if k in own and own[k].shape != v.shape]
    if not usable:
        raise fail(path, f"no tensor in this file matches the audio encoder ({len(sd)} keys)")
    result = encoder.load_state_dict(usable, strict=False)
    return LoadReport(path=path, loaded=len(usable), missing=list(result.missing_keys),
                      unexpected=[k for k in sd if k not in own], mismatched=mismatched)


def build_audio_encoder(preset: str, num_classes: int, visual_dim: int | None, n_mels: int = 128,
                        frames_per_second: int = 100, max_seconds: int = 10, context: Context = "clip",
                        weights: Path | None = None, **overrides: Any) -> AudioEncoder:
    """Build an `AudioEncoder` from a named size (`AUDIO_PRESETS`), optionally loading `weights` (see
    `load_audio_weights`; the outcome is kept in `encoder.weights_report`).

    Raises:
        PcasError: unknown preset, or an unusable weights file.
    """
    if preset not in AUDIO_PRESETS:
        raise PcasError(f"unknown audio encoder preset '{preset}' (known: {', '.join(AUDIO_PRESETS)})")
    kwargs = {**AUDIO_PRESETS[preset], **overrides}
    encoder = AudioEncoder(num_classes, n_mels=n_mels, frames_per_second=frames_per_second, visual_dim=visual_dim,
                           max_seconds=max_seconds, context=context, **kwargs)
    if weights is not None:
        encoder.weights_report = load_audio_weights(encoder, Path(weights))
    return encoder
