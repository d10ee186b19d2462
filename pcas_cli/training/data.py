"""Torch datasets over a `features` artifact, read one clip per item, with seeded augmentations.

Weak supervision (DESIGN.md, "What each stage may see"): training datasets return frames, fbank, video-level labels
and validity flags, and NEVER per-frame masks; only the fully supervised upper bound passes `with_masks=True`
(`pcas train-seg` passes `masks_from=`: masks from a predictions artifact, i.e. pseudo-labels, not ground truth). The
`visible` maps exist for a reference baseline; besides it, only a labelled diagnostic reads them (`oracle_regions`:
what labels CMPC would want, never a result).

Tensors per item (T = seconds, one frame per second):
- frames (T, 3, H, W) float in [0, 1] (ImageNet normalisation is the model's job: its constants are buffers);
- fbank (T, F, M) float32, AST-normalised per-second log-mel; labels (C,) float multi-hot; frame_valid (T,) bool.

Randomness comes only from torch's RNG (the global one, or a given generator): the training loop seeds it per
process and per DataLoader worker, so augmentations repeat exactly for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from pcas_cli.artifacts import FEATURES, read_features, read_predictions
from pcas_cli.audio import FbankParams
from pcas_cli.errors import PcasError

WEAK_FIELDS = ("clip_id", "subset", "frames", "fbank", "labels", "frame_valid")
MASK_FIELDS = ("masks", "mask_valid")  # per-frame ground truth: scoring and the supervised upper bound only


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentations; the defaults change nothing."""

    crop_scale: tuple[float, float] = (1.0, 1.0)  # area fraction range of the random resized crop; lower >= 1 = off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range (width / height) of the crop
    hflip: float = 0.0  # probability of a horizontal flip
    color_jitter: float = 0.0  # brightness, contrast and saturation factors drawn from [1 - s, 1 + s] (0 = off)
    hue_jitter: float = 0.0  # hue shift drawn from [-h, h], as a fraction of the colour wheel (<= 0.5; 0 = off)
    grayscale: float = 0.0  # probability of turning the frames grey (3 equal channels)
    time_mask: int = 0  # SpecAugment: widest time mask, in fbank frames (0 = off)
    time_masks: int = 1  # time masks per second of audio
    freq_mask: int = 0  # SpecAugment: widest frequency mask, in mel bins (0 = off)
    freq_masks: int = 1  # frequency masks per second of audio
    freq_warp: float = 0.0  # per second, stretch the mel axis by a factor in [1 - w, 1 + w] (0 = off; see mel_warp)
    mix: float = 0.0  # ClipDataset: chance of adding another train clip's audio to the clip's (see mix_fbank)
    mix_gain_db: tuple[float, float] = (-6.0, 0.0)  # range of the added clip's level relative to the clip's, dB

    @property
    def visual(self) -> bool:
        return self.crop_scale[0] < 1.0 or self.hflip > 0.0 or self.colour

    @property
    def colour(self) -> bool:
        return self.color_jitter > 0.0 or self.hue_jitter > 0.0 or self.grayscale > 0.0

    @property
    def audio(self) -> bool:
        return ((self.time_mask > 0 and self.time_masks > 0) or (self.freq_mask > 0 and self.freq_masks > 0)
                or self.freq_warp > 0.0)


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A random (top, left, crop_height, crop_width) covering `scale` of the area at aspect ratio within `ratio`.

    Inception-style sampling: up to 10 draws of (area, log-ratio); if none fits, the whole image.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(generator))
        aspect = math.exp(log_lo + (log_hi - log_lo) * _rand(generator))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= width and 0 < ch <= height:
            return _randint(0, height - ch, generator), _randint(0, width - cw, generator), ch, cw
    return 0, 0, height, width


def crop_flip(images: torch.Tensor, box: tuple[int, int, int, int], flip: bool,
              masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop every image to `box`, resize back to the input size, optionally mirror; masks follow (nearest).

    Args:
        images: (N, 3, H, W) float.
        masks: (N, H, W) integer labels, or None.
    """
    n, _, h, w = images.shape
    top, left, ch, cw = box
    if (ch, cw) != (h, w):
        images = F.interpolate(images[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                               align_corners=False)
        if masks is not None:
            crop = masks[:, None, top:top + ch, left:left + cw].float()  # (N, 1, ch, cw)
            masks = F.interpolate(crop, size=(h, w), mode="nearest")[:, 0].to(masks.dtype)
    if flip:
        images = images.flip(-1)
        masks = masks.flip(-1) if masks is not None else None
    return images, masks


def colour_augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue (in that order), then random grey: one draw for all N images.

    Colour is a shortcut a from-scratch encoder can take on few scenes (a digit's ink colour names the scene, not the
    digit); changing it per clip leaves shape as the only cue. Masks are unaffected.

    Args:
        images: (N, 3, H, W) float in [0, 1]; not modified.
    """
    if not cfg.colour:
        return images
    s = cfg.color_jitter
    factors = [1.0 + s * (2.0 * _rand(generator) - 1.0) for _ in range(3)] if s > 0.0 else [1.0, 1.0, 1.0]
    hue = cfg.hue_jitter * (2.0 * _rand(generator) - 1.0) if cfg.hue_jitter > 0.0 else 0.0
    grey = cfg.grayscale > 0.0 and _rand(generator) < cfg.grayscale
    out = TF.adjust_brightness(images, factors[0])
    out = TF.adjust_contrast(out, factors[1])
    out = TF.adjust_saturation(out, factors[2])
    if hue != 0.0:
        out = TF.adjust_hue(out, hue)
    if grey:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    return out.clamp(0.0, 1.0)


def augment_images(images: torch.Tensor, cfg: AugmentConfig, masks: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One random crop, flip and colour change shared by all N images (the frames of one clip move together);
    masks follow the crop and flip."""
    if not cfg.visual:
        return images, masks
    h, w = images.shape[-2:]
    box = crop_box(h, w, cfg.crop_scale, cfg.crop_ratio, generator) if cfg.crop_scale[0] < 1.0 else (0, 0, h, w)
    flip = cfg.hflip > 0.0 and _rand(generator) < cfg.hflip
    images, masks = crop_flip(images, box, flip, masks)
    return colour_augment(images, cfg, generator), masks


def mel_warp(fbank: torch.Tensor, factor: float) -> torch.Tensor:
    """Stretch the mel axis by `factor`: bin m takes the value at m / factor (linear interpolation; beyond the top
    bin, the top bin). A cheap stand-in for vocal-tract-length perturbation (Jaitly & Hinton, 2013): speakers differ
    mostly in where their formants sit, so a listener trained on few speakers sees more of them.

    Args:
        fbank: (F, M) one second of log-mel.
    """
    m_len = fbank.shape[-1]
    src = (torch.arange(m_len, dtype=torch.float32) / factor).clamp(max=m_len - 1)  # (M,) source positions
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=m_len - 1)
    frac = (src - lo.float()).to(fbank.dtype)
    return fbank[..., lo] * (1.0 - frac) + fbank[..., hi] * frac


def mix_fbank(fbank: torch.Tensor, other: torch.Tensor, gain_db: float, norm_mean: float,
              norm_std: float) -> torch.Tensor:
    """The fbank of the sum of two recordings, `other` scaled by `gain_db`, from their AST-normalised fbanks.

    Log-mel energies add in the power domain: log(e^a + g e^b) (exact when the two signals are uncorrelated in each
    mel band, as two independent recordings are on average). Undoes the normalisation x = (fb - mean) / (2 std)
    first and applies it again after.

    Args:
        fbank, other: (..., F, M) AST-normalised log-mel of the same shape.
    """
    scale = 2.0 * norm_std
    a, b = fbank * scale + norm_mean, other * scale + norm_mean
    return (torch.logaddexp(a, b + gain_db * math.log(10.0) / 10.0) - norm_mean) / scale


def spec_augment(fbank: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment time and frequency masking, drawn independently for each second (after a mel-axis warp, when on).

    Masked cells are set to 0, which in AST-normalised fbank is the dataset mean (method-facts: AST normalisation),
    so masking removes information without adding an out-of-distribution value.

    Args:
        fbank: (T, F, M) per-second log-mel (F frames, M mel bins); not modified.
    """
    if not cfg.audio:
        return fbank
    out = fbank.clone()
    t_len, f_len, m_len = out.shape
    for t in range(t_len):
        if cfg.freq_warp > 0.0:
            out[t] = mel_warp(out[t], 1.0 + cfg.freq_warp * (2.0 * _rand(generator) - 1.0))
        for _ in range(cfg.time_masks if cfg.time_mask > 0 else 0):
            width = _randint(0, min(cfg.time_mask, f_len), generator)
            start = _randint(0, f_len - width, generator)
            out[t, start:start + width, :] = 0.0
        for _ in range(cfg.freq_masks if cfg.freq_mask > 0 else 0):
            width = _randint(0, min(cfg.freq_mask, m_len), generator)
            start = _randint(0, m_len - width, generator)
            out[t, :, start:start + width] = 0.0
    return out


def _as_tensor(name: str, value: Any) -> Any:
    """Artifact arrays -> training tensors (see module docstring); strings pass through."""
    if isinstance(value, str):
        return value
    arr = torch.from_numpy(np.ascontiguousarray(value) if np.ndim(value) else np.array(value))  # 0-d stays 0-d
    if name == "frames":
        return arr.movedim(-1, -3).float().div_(255.0)  # (..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1]
    if name in ("fbank", "labels"):
        return arr.float()
    if name == "masks":
        return arr.long()  # class indices, ready for cross-entropy
    return arr  # frame_valid / mask_valid stay bool


def _check_fields(fields: tuple[str, ...], with_masks: bool) -> tuple[str, ...]:
    allowed = WEAK_FIELDS + (MASK_FIELDS if with_masks else ())
    bad = [f for f in fields if f not in allowed]
    if bad:
        hint = (" (per-frame masks are for scoring and the fully supervised upper bound only: with_masks=True)"
                if set(bad) <= set(MASK_FIELDS) else f"; allowed: {list(allowed)}")
        raise ValueError(f"fields {bad} cannot be served for training{hint}")
    assert set(allowed) <= set(FEATURES), "artifact schema lost a field this module serves"
    return tuple(dict.fromkeys(fields + (MASK_FIELDS if with_masks else ())))  # masks added, order kept


class ClipDataset(Dataset):
    """One item per clip of a features artifact: a dict of the requested fields plus its `index`.

    Memory does not grow with the artifact: each item reads its own clip (the reader opens the file lazily in every
    DataLoader worker).

    Args:
        path: the features artifact.
        fields: which of WEAK_FIELDS to return.
        augment: clip-level augmentation (one crop/flip for all frames; SpecAugment per second); None = none.
        with_masks: also return `masks` (T, H, W) int64 and `mask_valid` (T,); only for the supervised upper bound.

    Clip mixing (`augment.mix`, beyond the paper): with that chance the audio becomes the clip's plus a random other
    clip's with the same valid seconds (mix_fbank, before SpecAugment), so a listener hears digits spoken over each
    other more often than the data has them. Items then also carry `partner` (its index, -1 when not mixed) and
    `partner_labels` (its video labels, zeros when not mixed); `labels` stays the clip's own, and what the audio holds
    is labels | partner_labels (`heard_labels`). Frames stay the clip's own.
    """

    def __init__(self, path: Path | str, fields: tuple[str, ...] = ("frames", "fbank", "labels", "frame_valid"),
                 augment: AugmentConfig | None = None, with_masks: bool = False) -> None:
        self.fields = _check_fields(tuple(fields), with_masks)
        self.reader = read_features(path)
        self.augment = augment or AugmentConfig()
        self.partners: list[torch.Tensor] = []  # per clip: the clips it may be mixed with (same valid seconds)
        if self.augment.mix > 0.0:
            if "fbank" not in self.fields:
                raise ValueError("augment.mix mixes audio: it needs the fbank field")
            valid = [self.reader.read("frame_valid", i).tobytes() for i in range(len(self.reader))]
            groups: dict[bytes, list[int]] = {}
            for i, key in enumerate(valid):
                groups.setdefault(key, []).append(i)
            self.partners = [torch.tensor([j for j in groups[key] if j != i], dtype=torch.long)
                             for i, key in enumerate(valid)]
            # the normalisation extract applied (recorded in the artifact's config; AST's default otherwise)
            fbank_cfg = {**asdict(FbankParams()), **self.reader.provenance.get("config", {}).get("fbank", {})}
            self.norm = (float(fbank_cfg["norm_mean"]), float(fbank_cfg["norm_std"]))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.reader.classes

    @property
    def artifact_id(self) -> str:
        return self.reader.artifact_id

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i}
        item.update({k: _as_tensor(k, v) for k, v in self.reader.clip(i, self.fields).items()})
        if "frames" in item:
            item["frames"], masks = augment_images(item["frames"], self.augment, item.get("masks"))
            if masks is not None:
                item["masks"] = masks
        if self.partners:
            self._mix(i, item)
        if "fbank" in item:
            item["fbank"] = spec_augment(item["fbank"], self.augment)
        return item

    def _mix(self, i: int, item: dict[str, Any]) -> None:
        partner, partner_labels = -1, torch.zeros(len(self.reader.classes))
        candidates = self.partners[i]
        if len(candidates) and _rand(None) < self.augment.mix:
            partner = int(candidates[_randint(0, len(candidates) - 1, None)])
            other = self.reader.clip(partner, ("fbank", "labels"))
            lo, hi = self.augment.mix_gain_db
            gain = lo + (hi - lo) * _rand(None)
            item["fbank"] = mix_fbank(item["fbank"], _as_tensor("fbank", other["fbank"]), gain, *self.norm)
            partner_labels = _as_tensor("labels", other["labels"])
        item["partner"], item["partner_labels"] = partner, partner_labels


def heard_labels(batch: dict[str, Any]) -> torch.Tensor:
    """(B, C) the video labels of what a batch's audio holds: the clips' own, joined by their mixed-in partners'."""
    if "partner_labels" not in batch:
        return batch["labels"]
    return torch.maximum(batch["labels"], batch["partner_labels"])


class FrameDataset(Dataset):
    """One item per valid (clip, frame) pair: a single image with its clip's video-level labels.

    Item keys: `index`, `clip_index`, `frame_index`, `image` (3, H, W) float in [0, 1], and, when requested,
    `labels` (C,), `fbank` (F, M) for that second, `clip_id`, `subset`; with `with_masks`, `mask` (H, W) int64 and
    `mask_valid` (bool). The pair index is two int32 per valid frame; clip data is read per item.

    Args:
        path: the features artifact.
        fields: which of ("frames", "fbank", "labels", "clip_id", "subset") to return; "frames" gives `image`.
        augment: per-image crop/flip and per-second SpecAugment; None = none.
        with_masks: see ClipDataset.
        masks_from: a predictions artifact of the same clips (e.g. the train split's refined pseudo-labels) whose
            masks are served instead of the ground truth, which is then never read; every valid frame has one
            (`mask_valid` True). Used by `pcas train-seg`; implies masks are served.
        oracle_regions: DIAGNOSTIC, ground truth: also serve `region` (H, W) int64, 0 background, 1 a visible
            object that is silent, 2 a sounding object (the masks and the visible maps of generated data), moved by
            the same crop / flip as the image, and `region_valid` (bool: the frame has a mask). Used only by the
            contrast stages' `oracle_patch_labels`, never by a result.
    """

    def __init__(self, path: Path | str, fields: tuple[str, ...] = ("frames", "labels"),
                 augment: AugmentConfig | None = None, with_masks: bool = False,
                 masks_from: Path | str | None = None, oracle_regions: bool = False) -> None:
        if "frame_valid" in fields:
            raise ValueError("FrameDataset serves valid frames only; 'frame_valid' is not a per-frame field")
        if augment is not None and augment.mix > 0.0:
            raise PcasError("augment.mix mixes whole clips' audio: only train-tvp's clip batches apply it")
        self.fields = _check_fields(tuple(fields), with_masks)
        self.reader = read_features(path)
        self.mask_reader = None
        if masks_from is not None:
            self.fields = tuple(f for f in self.fields if f not in MASK_FIELDS)  # ground truth is never read
            self.mask_reader = read_predictions(masks_from)
            if self.mask_reader.clip_ids() != self.reader.clip_ids():
                raise PcasError(f"{masks_from}: its clips are not those of {path} (made from another split or "
                                "data set?)")
        self.oracle_regions = oracle_regions
        if oracle_regions and (with_masks or masks_from is not None):
            raise ValueError("oracle_regions serves its own ground-truth map: not with with_masks / masks_from")
        if oracle_regions and not self.reader.meta.get("has_visible"):
            raise PcasError(f"{path}: has no visible-object maps (only generated data sets do); oracle patch labels "
                            "need them")
        self.augment = augment or AugmentConfig()
        valid = np.asarray(self.reader.read("frame_valid", slice(None)), dtype=bool)  # (N, T)
        self.pairs = np.argwhere(valid).astype(np.int32)  # (P, 2): (clip, frame), clip-major order

    @property
    def classes(self) -> tuple[str, ...]:
        return self.reader.classes

    @property
    def artifact_id(self) -> str:
        return self.reader.artifact_id

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def __getitem__(self, k: int) -> dict[str, Any]:
        clip, t = (int(v) for v in self.pairs[k])
        item: dict[str, Any] = {"index": k, "clip_index": clip, "frame_index": t}
        for name in self.fields:
            value = self.reader.read(name, clip)
            per_clip = name in ("labels", "clip_id", "subset")
            item[name] = _as_tensor(name, value if per_clip else value[t])  # per-frame fields: frame t only
        if self.mask_reader is not None:
            item["masks"] = _as_tensor("masks", self.mask_reader.read("masks", clip)[t])
            item["mask_valid"] = torch.tensor(True)
        if self.oracle_regions:
            sounding = np.asarray(self.reader.read("masks", clip)[t]) > 0
            visible = np.asarray(self.reader.read("visible", clip)[t]) > 0
            item["masks"] = torch.from_numpy(np.where(sounding, 2, visible.astype(np.int64)))  # (H, W) 0 / 1 / 2
            item["region_valid"] = torch.tensor(bool(self.reader.read("mask_valid", clip)[t]))
        if "frames" in item:
            image = item.pop("frames")  # (3, H, W)
            masks = item.pop("masks")[None] if "masks" in item else None  # (1, H, W)
            images, masks = augment_images(image[None], self.augment, masks)
            item["image"] = images[0]
            if masks is not None:
                item["region" if self.oracle_regions else "mask"] = masks[0]
        elif "masks" in item:
            item["mask"] = item.pop("masks")
        if "fbank" in item:
            item["fbank"] = spec_augment(item["fbank"][None], self.augment)[0]
        return item
