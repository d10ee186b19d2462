"""The PASCAL-VOC bit-interleave colour palette used by AVSBench-semantic `labels_rgb/*.png`.

Class j gets its colour by spreading the bits of j over the three channels, three bits at a time: in 3-bit group i,
bit 0 goes to R, bit 1 to G and bit 2 to B, each at position 7 - i (AVSBench `avss` loader; PASCAL VOC devkit).
So 0 -> (0, 0, 0), 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), 4 -> (0, 0, 128), ...
"""

from __future__ import annotations

import functools

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The first `n` palette colours.

    Args:
        n: number of entries (class ids 0..n-1), at most 256.

    Returns:
        (n, 3) uint8 RGB colours.
    """
    if not 0 < n <= 256:
        raise ValueError(f"palette size must be in 1..256, got {n}")
    pal = np.zeros((n, 3), np.uint8)
    for j in range(n):
        r = g = b = 0
        c = j
        for i in range(8):  # 8 groups of 3 bits cover ids up to 2**24; ids < 256 need only the first 3
            r |= ((c >> 0) & 1) << (7 - i)
            g |= ((c >> 1) & 1) << (7 - i)
            b |= ((c >> 2) & 1) << (7 - i)
            c >>= 3
        pal[j] = (r, g, b)
    return pal


def index_to_rgb(index: np.ndarray) -> np.ndarray:
    """Colour a class-index map with the VOC palette: (H, W) uint8 -> (H, W, 3) uint8."""
    return _full_palette()[index.astype(np.uint8)]


@functools.lru_cache(maxsize=1)
def _full_palette() -> np.ndarray:
    palette = voc_palette(256)
    palette.flags.writeable = False  # shared by every caller
    return palette


def rgb_to_index(rgb: np.ndarray, n_classes: int) -> np.ndarray:
    """Decode a palette-coloured mask by exact colour equality, as the official AVSS loader does.

    Any colour that is not one of the first `n_classes` palette entries becomes class 0 (background), exactly like
    the official "equality per palette entry, then argmax" decoding.

    Args:
        rgb: (H, W, 3) uint8 colours.
        n_classes: number of classes including background (71 for AVSBench-semantic).

    Returns:
        (H, W) uint8 class indices.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {rgb.shape}")
    pal = voc_palette(n_classes).astype(np.int64)  # (K, 3)
    # Pack colours into one int so that equality is a single lookup: (H, W) codes vs (K,) palette codes.
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]  # (K,), all distinct for K <= 256
    order = np.argsort(pal_codes)
    sorted_codes = pal_codes[order]
    pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)  # (H, W)
    hit = sorted_codes[pos] == codes
    return np.where(hit, order[pos], 0).astype(np.uint8)
