"""Fully connected (dense) CRF refinement of soft per-pixel class probabilities with pydensecrf.

Presets are the ones used by the CAM literature (docs/reference/method-facts.md, fact 7), kept exact. Their
spatial widths (`*_sxy`) are in pixels and were tuned on ~448-512 px images; on much smaller frames (96-128 px in
the tiny preset, 224 px on AVSBench) the same sxy covers a larger fraction of the image, i.e. smooths more. Use
`CRFParams.scaled(factor)` (e.g. 112 / 448 = 0.25) to shrink the spatial widths proportionally; colour widths are in
RGB units and do not depend on resolution.

pydensecrf holds the GIL during inference (fact 8), so `crf_many` parallelises with worker *processes*. Only this
module touches pydensecrf; it imports neither torch nor h5py so spawned workers start quickly.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

# The unary is -log(clip(p, PROB_CLIP)) as in ToCo/PSA (pydensecrf `unary_from_softmax` default).
PROB_CLIP = 1e-5

Item = tuple[np.ndarray, np.ndarray, Sequence[int]]  # (image (H, W, 3) uint8, probs (K, H, W), present channels)


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF kernel parameters (pydensecrf `addPairwiseGaussian` / `addPairwiseBilateral`)."""

    gauss_sxy: float  # spatial std (pixels) of the smoothness kernel
    gauss_compat: float  # weight of the smoothness kernel (Potts compatibility)
    bilateral_sxy: float  # spatial std (pixels) of the appearance kernel
    bilateral_srgb: float  # colour std (RGB units, 0-255) of the appearance kernel
    bilateral_compat: float  # weight of the appearance kernel (Potts compatibility)
    iterations: int = 10  # mean-field iterations
    unary: Literal["softmax"] = "softmax"  # unary from probabilities: -log(clip(p, 1e-5))

    def __post_init__(self) -> None:
        if self.unary != "softmax":
            raise ValueError(f"unsupported unary {self.unary!r} (only 'softmax')")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")

    def scaled(self, factor: float) -> "CRFParams":
        """The same preset with both spatial widths multiplied by `factor` (for images smaller than ~448 px)."""
        if factor <= 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        return replace(self, gauss_sxy=self.gauss_sxy * factor, bilateral_sxy=self.bilateral_sxy * factor)


# method-facts.md fact 7 (ToCo `utils/dcrf.py` and `tools/infer_cam_crf_label.py`, PSA `crf_inference`).
CRF_PRESETS: dict[str, CRFParams] = {
    # ToCo's refinement of CAM pseudo-labels: gaussian 3/3, bilateral 36/3/4.
    "toco_cam": CRFParams(gauss_sxy=3, gauss_compat=3, bilateral_sxy=36, bilateral_srgb=3, bilateral_compat=4),
    # ToCo's test-time refinement of the final segmentation: gaussian 1/1, bilateral 121/5/4.
    "toco_seg": CRFParams(gauss_sxy=1, gauss_compat=1, bilateral_sxy=121, bilateral_srgb=5, bilateral_compat=4),
    # PSA-style `crf_inference`: gaussian 3/3, bilateral 80/13/10.
    "psa": CRFParams(gauss_sxy=3, gauss_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10),
}


def get_preset(name: str) -> CRFParams:
    """A named preset, or ValueError listing the known names."""
    try:
        return CRF_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown CRF preset {name!r}; known: {sorted(CRF_PRESETS)}") from None


def _check_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probs must be (K, H, W), got {probs.shape}")
    _, h, w = probs.shape
    if image.shape != (h, w, 3):
        raise ValueError(f"image must be (H, W, 3) = {(h, w, 3)}, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine per-pixel label probabilities with a dense CRF.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        probs: (K, H, W) probabilities (channel sums need not be exactly 1: a per-pixel constant in the unary
            does not change the mean-field result).
        params: kernel parameters, e.g. `CRF_PRESETS["toco_cam"]`.

    Returns:
        (K, H, W) float32 refined marginals, summing to 1 over K.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    _check_inputs(image, probs)
    k, h, w = probs.shape
    if k == 1:  # a single label: nothing to decide
        return np.ones((1, h, w), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, k)  # width first (pydensecrf API)
    unary = np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32, copy=False), clip=PROB_CLIP))  # (K, HW)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
    q = crf.inference(params.iterations)  # K x HW matrix
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def _present_channels(k: int, present: Sequence[int]) -> list[int]:
    """Background (0) plus the given class channels, sorted and de-duplicated; refuses out-of-range channels."""
    bad = [c for c in present if not 0 <= int(c) < k]
    if bad:
        raise ValueError(f"present channels {bad} out of range for K={k}")
    return sorted({0, *(int(c) for c in present)})


def _scatter(refined: np.ndarray, channels: list[int], k: int) -> np.ndarray:
    """(len(channels), H, W) -> (K, H, W) with zeros in the channels the CRF did not see."""
    out = np.zeros((k, *refined.shape[1:]), dtype=np.float32)
    out[channels] = refined
    return out


def dense_crf_present(image: np.ndarray, probs: np.ndarray, present: Sequence[int],
                      params: CRFParams) -> np.ndarray:
    """`dense_crf` on background plus the present channels only (cost grows with the number of labels).

    Args:
        image: (H, W, 3) uint8 RGB frame.
        probs: (K, H, W) probabilities, channel 0 = background.
        present: channel indices (1..K-1) of the classes to keep; background is always added.
        params: kernel parameters.

    Returns:
        (K, H, W) float32 refined probabilities; the other channels are exactly 0.
    """
    _check_inputs(image, probs)
    k = probs.shape[0]
    channels = _present_channels(k, present)
    return _scatter(dense_crf(image, probs[channels], params), channels, k)


def resolve_workers(workers: int) -> int:
    """0 means one worker per usable CPU core."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not available on macOS
            return max(1, os.cpu_count() or 1)
    return workers


def _crf_chunk(jobs: list[tuple[np.ndarray, np.ndarray]], params: CRFParams) -> list[np.ndarray]:
    """Worker-side: refine a chunk of already channel-selected (image, probs) pairs."""
    return [dense_crf(image, sub, params) for image, sub in jobs]


def _prepare(item: Item) -> tuple[tuple[np.ndarray, np.ndarray], list[int], int]:
    """Parent-side: select the present channels before pickling, so only those cross the process boundary."""
    image, probs, present = item
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    _check_inputs(image, probs)
    channels = _present_channels(probs.shape[0], present)
    return (image, np.ascontiguousarray(probs[channels])), channels, probs.shape[0]


def crf_many(items: Iterable[Item], params: CRFParams, workers: int = 1, chunksize: int = 4,
             prefetch: int = 2) -> Iterator[np.ndarray]:
    """`dense_crf_present` over a stream of frames, in order, optionally in parallel worker processes.

    Items are consumed lazily: at most `workers * prefetch` chunks of `chunksize` frames are in flight, so memory
    does not grow with the stream. Results are identical to the serial path (same code, deterministic inference).

    Args:
        items: (image (H, W, 3) uint8, probs (K, H, W), present channel indices) per frame.
        params: kernel parameters.
        workers: processes; 1 runs serially in this process, 0 uses every core.
        chunksize: frames per task sent to a worker (larger amortises pickling and scheduling).
        prefetch: chunks queued per worker.

    Yields:
        (K, H, W) float32 refined probabilities, one per item, in input order.
    """
    workers = resolve_workers(workers)
    if chunksize < 1 or prefetch < 1:
        raise ValueError("chunksize and prefetch must be >= 1")
    if workers == 1:
        for item in items:
            job, channels, k = _prepare(item)
            yield _scatter(dense_crf(job[0], job[1], params), channels, k)
        return
    # spawn, not fork: the parent may hold torch/HDF5 threads and open files that a forked child must not inherit.
    ctx = multiprocessing.get_context("spawn")
    it = iter(items)
    pending: collections.deque[tuple[Future, list[tuple[list[int], int]]]] = collections.deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:

        def submit_next() -> bool:
            prepared = [_prepare(item) for item in islice(it, chunksize)]
            if not prepared:
                return False
            jobs = [p[0] for p in prepared]
            pending.append((pool.submit(_crf_chunk, jobs, params), [(p[1], p[2]) for p in prepared]))
            return True

        try:
            more = True
            while more and len(pending) < workers * prefetch:
                more = submit_next()
            while pending:
                future, layout = pending.popleft()
                if more:
                    more = submit_next()
                for refined, (channels, k) in zip(future.result(), layout):
                    yield _scatter(refined, channels, k)
        finally:
            # The consumer stopped early (error, interrupt): do not compute chunks nobody will read.
            for future, _ in pending:
                future.cancel()
