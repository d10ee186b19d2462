"""Segmentation model for the fully supervised upper bound (and optional training on pseudo-labels).

A small FPN over the encoder's dense maps: every level is projected to a common width, coarse levels are upsampled
and added into finer ones, and the finest level is upsampled in x2 stages to stride 4 before the classifier. Logits
are then bilinearly resized to the input. ViTs give one stride-p map (2 upsampling stages for p = 16); ResNet-50 and
PVT-v2 give four maps of stride 4..32, so the FPN already ends at stride 4.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from pcas_cli.models.visual import VisualEncoder


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegmentationModel(nn.Module):
    """Visual encoder + FPN decoder producing (B, K, H, W) logits at the input resolution.

    Args:
        encoder: the visual encoder (its classifier is unused here).
        num_outputs: K, output channels (classes + background, or 2 for binary AVS).
        hidden: decoder width.
        out_stride: stride of the decoder's last feature map before the final resize (4 = 1/4 resolution).
    """

    def __init__(self, encoder: VisualEncoder, num_outputs: int, hidden: int = 128, out_stride: int = 4) -> None:
        super().__init__()
        self.encoder = encoder
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in encoder.pyramid_channels)
        self.fuse = _conv_bn_relu(hidden, hidden)
        finest = min(encoder.pyramid_reductions)
        n_up = max(0, round(math.log2(finest / out_stride)))  # x2 stages from the finest level down to out_stride
        self.up = nn.ModuleList(_conv_bn_relu(hidden, hidden) for _ in range(n_up))
        self.classifier = nn.Conv2d(hidden, num_outputs, 1)

    def decode(self, maps: list[Tensor]) -> Tensor:
        """Fine-to-coarse maps -> (B, K, h', w') logits at stride `out_stride` (before the final resize)."""
        x = self.lateral[-1](maps[-1])
        for lat, fmap in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):  # top-down, coarse to fine
            x = lat(fmap) + F.interpolate(x, size=fmap.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(x)
        for stage in self.up:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.classifier(x)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, K, H, W) logits."""
        logits = self.decode(self.encoder.pyramid(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
