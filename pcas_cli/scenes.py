"""Scene building blocks shared by the generated data sets (`pcas synth`, and later `pcas build-avdigits`).

A generated clip is a small video: K objects (distinct classes) stay in view for T seconds and move a little; frame t
shows second t. A per-second *sounding schedule* says which of the objects sound during each second. Ground truth
follows AVSBench: the mask of frame t marks only the objects sounding in second t (class index, 0 = background), and
the video-level labels (AVSS `a_obj`) are the union of classes that sound at some second. This module holds what does
not depend on how objects look or sound:

- layouts and subsets: frames per clip, single vs multi-source, which frames carry a mask (S4 / AVSS-v1s train:
  frame 0 only, as in AVSBench), clip ids in the AVSS uid format;
- `sample_schedule`: the per-second sounding schedule (silent seconds, single and multi-source seconds, silent
  distractors, a chance to keep the previous second's sources);
- `gate_envelope`, `colored_noise`, `mix_at_snr`: audio mixing of gated sources with background noise at an SNR;
- `paste`, `visible_footprints`, `label_maps`: compositing with masks and occlusion, and the two class maps
  (sounding objects -> mask, every visible object -> `Sample.visible`);
- `SceneStats`: the statistics `pcas synth --stats` prints, accumulated per frame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pcas_cli.datasets.sample import Sample

LAYOUTS = ("avss", "s4", "ms3")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SubsetSpec:
    """One kind of clip in an AVSBench layout."""

    name: str  # written to Sample.subset (AVSS `label` column: v1s, v1m, v2; or s4 / ms3)
    num_frames: int  # T: seconds = frames per clip
    multi_source: bool  # False: at most one object (one class) ever sounds in the clip


SUBSETS = {
    "v1s": SubsetSpec("v1s", 5, False),
    "v1m": SubsetSpec("v1m", 5, True),
    "v2": SubsetSpec("v2", 10, True),
    "s4": SubsetSpec("s4", 5, False),
    "ms3": SubsetSpec("ms3", 5, True),
}
LAYOUT_SUBSETS = {"avss": ("v1s", "v1m", "v2"), "s4": ("s4",), "ms3": ("ms3",)}


def plan_subsets(layout: str, n: int, mix: Sequence[float], rng: np.random.Generator) -> list[str]:
    """Subset of each of the `n` clips of a split, in a shuffled order.

    Args:
        layout: "avss", "s4" or "ms3".
        n: clips in the split.
        mix: AVSS only: relative shares of v1s, v1m and v2 (normalised here); counts use largest remainders so
            they add up to `n` exactly.
        rng: the split's generator (shuffles the order).
    """
    names = LAYOUT_SUBSETS[layout]
    if len(names) == 1:
        return [names[0]] * n
    w = np.asarray(mix, np.float64)
    if w.shape != (len(names),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"subset mix must be {len(names)} non-negative shares, got {tuple(mix)}")
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    plan = [name for name, c in zip(names, counts) for _ in range(c)]
    return [plan[i] for i in rng.permutation(n)]


def mask_valid(subset: str, split: str, num_frames: int) -> np.ndarray:
    """(T,) bool: which frames carry a ground-truth mask, as in AVSBench.

    S4 train and AVSS v1s train annotate only the first frame (their official loaders train on frame 0); every other
    split and subset annotates every frame.
    """
    valid = np.ones(num_frames, bool)
    if split == "train" and subset in ("s4", "v1s"):
        valid[1:] = False
    return valid


def clip_uid(prefix: str, split: str, index: int, subset: str, num_frames: int) -> str:
    """A clip id shaped like AVSBench's: `<vid>_<startms>_<endms>` for v1s/v2, `<vid>` otherwise.

    `<vid>` (`{prefix}-{split}-{index:04d}`) has no underscore, so the AVSS uid splits back into vid and times.
    """
    vid = f"{prefix}-{split}-{index:04d}"
    return f"{vid}_0_{num_frames * 1000}" if subset in ("v1s", "v2") else vid


# ----------------------------------------------------------------------------------------------- sounding schedule


def sample_schedule(
    rng: np.random.Generator,
    num_objects: int,
    num_seconds: int,
    multi_source: bool,
    p_silent: float,
    p_multi: float,
    max_sources: int,
    p_repeat: float,
) -> np.ndarray:
    """Which objects sound in each second.

    Single-source clips: one object (always the first, index 0; callers order objects randomly) may sound; each
    second it is silent with probability `p_silent`. Multi-source clips: a random pool of 2..K objects (1 if K = 1)
    may sound (the rest are silent for the whole clip); each second is silent with `p_silent`, else has
    2..min(pool, max_sources) sources with `p_multi` (when that range is not empty), else one. In both, a second
    copies the previous one with `p_repeat` (sounds persist; this keeps the per-second marginals unchanged, the
    first second being drawn fresh). At least one second sounds, so a
    clip's video-level labels are never empty.

    Returns:
        (T, K) bool schedule.
    """
    sched = np.zeros((num_seconds, num_objects), bool)
    if num_objects == 0 or num_seconds == 0:
        return sched
    if multi_source:
        pool = rng.permutation(num_objects)[: rng.integers(min(2, num_objects), num_objects + 1)]
    else:
        pool = np.array([0])
    hi = min(len(pool), max_sources)
    for t in range(num_seconds):
        if t > 0 and rng.random() < p_repeat:
            sched[t] = sched[t - 1]
            continue
        if rng.random() < p_silent:
            continue
        k = int(rng.integers(2, hi + 1)) if hi >= 2 and rng.random() < p_multi else 1
        sched[t, rng.choice(pool, size=k, replace=False)] = True
    if not sched.any():
        sched[rng.integers(num_seconds), rng.choice(pool)] = True
    return sched


# ------------------------------------------------------------------------------------------------------- audio


def gate_envelope(active: np.ndarray, sample_rate: int, ramp_s: float = 0.01) -> np.ndarray:
    """Per-sample gain that is 1 during active seconds and 0 elsewhere.

    The raised-cosine ramps (no clicks) lie *inside* the active seconds, so a silent second receives no energy at all
    from the gated source.

    Args:
        active: (T,) bool, one per second.
        sample_rate: samples per second.
        ramp_s: ramp length in seconds.

    Returns:
        (T * sample_rate,) float32.
    """
    env = np.repeat(active.astype(np.float32), sample_rate)  # (T*sr,)
    n = max(1, int(round(ramp_s * sample_rate)))
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)  # rises 0 -> 1
    a = np.concatenate([[False], active, [False]])
    for t in np.flatnonzero(a[1:-1] & ~a[:-2]):  # first second of each active run
        env[t * sample_rate: t * sample_rate + n] = ramp
    for t in np.flatnonzero(a[1:-1] & ~a[2:]):  # last second of each active run
        end = (t + 1) * sample_rate
        env[end - n: end] = np.minimum(env[end - n: end], ramp[::-1])
    return env


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS; (n,) float32."""
    f = np.fft.rfftfreq(n).astype(np.float32)
    f[0] = f[1] if n > 1 else 1.0
    # White noise has i.i.d. complex Gaussian Fourier coefficients: draw them directly (one FFT instead of two), in
    # single precision (plenty for noise, and about 3x faster).
    spec = np.empty(len(f), np.complex64)
    spec.real = rng.standard_normal(len(f), np.float32)
    spec.imag = rng.standard_normal(len(f), np.float32)
    x = np.fft.irfft(spec / f ** np.float32(exponent / 2), n)
    return (x / (np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)).astype(np.float32)


def mix_at_snr(
    sources: np.ndarray,
    schedule: np.ndarray,
    gains_db: np.ndarray,
    noise: np.ndarray,
    snr_db: float,
    sample_rate: int,
    ref_rms: float = 0.1,
    ramp_s: float = 0.01,
) -> tuple[np.ndarray, float]:
    """Mix gated sources with background noise.

    Each source is scaled to RMS `ref_rms * 10**(gain_db/20)` and gated by its column of the schedule; the noise is
    scaled to `ref_rms * 10**(-snr_db/20)`, i.e. `snr_db` is the SNR of a source at 0 dB gain against the noise. The
    noise level is fixed for the whole clip, so a silent second holds exactly the noise floor. If the mix would clip,
    the whole clip is scaled down (relative levels and SNR are kept).

    Args:
        sources: (K, S) raw source waveforms (any level), S = T * sample_rate.
        schedule: (T, K) bool.
        gains_db: (K,) per-source gain.
        noise: (S,) background noise (any level).
        snr_db: source-to-noise ratio in dB.
        sample_rate: samples per second.
        ref_rms: RMS of a 0 dB source.
        ramp_s: gate ramp length in seconds.

    Returns:
        ((S,) float32 mix in [-1, 1], noise RMS in the returned mix).
    """
    def unit(x: np.ndarray) -> np.ndarray:
        return x / (np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)

    noise_rms = ref_rms * 10 ** (-snr_db / 20)
    mix = unit(noise).astype(np.float64) * noise_rms  # (S,)
    for k in range(sources.shape[0]):
        if schedule[:, k].any():
            gain = ref_rms * 10 ** (gains_db[k] / 20)
            mix += unit(sources[k]) * gain * gate_envelope(schedule[:, k], sample_rate, ramp_s)
    peak = float(np.abs(mix).max(initial=0.0))
    if peak > 0.99:
        mix *= 0.99 / peak
        noise_rms *= 0.99 / peak
    return mix.astype(np.float32), float(noise_rms)


# ------------------------------------------------------------------------------------------------------ images


def paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, top: int, left: int) -> np.ndarray:
    """Paste `patch` where `alpha` is set, with its top-left corner at (top, left); parts outside are cut off.

    Args:
        canvas: (H, W, C) image, modified in place.
        patch: (h, w, C) values, same dtype as canvas.
        alpha: (h, w) bool footprint of the patch.
        top: row of the patch's first row (may be negative or beyond the canvas).
        left: column of the patch's first column.

    Returns:
        (H, W) bool: the pasted footprint in canvas coordinates.
    """
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    y0, y1 = max(top, 0), min(top + h, H)
    x0, x1 = max(left, 0), min(left + w, W)
    out = np.zeros((H, W), bool)
    if y0 >= y1 or x0 >= x1:
        return out
    a = alpha[y0 - top: y1 - top, x0 - left: x1 - left]
    region = canvas[y0:y1, x0:x1]
    region[a] = patch[y0 - top: y1 - top, x0 - left: x1 - left][a]
    out[y0:y1, x0:x1] = a
    return out


def visible_footprints(footprints: np.ndarray) -> np.ndarray:
    """What remains visible of each layer once later layers are drawn over it.

    Args:
        footprints: (K, H, W) bool, back (index 0) to front.

    Returns:
        (K, H, W) bool.
    """
    vis = footprints.copy()
    covered = np.zeros(footprints.shape[1:], bool)
    for k in range(footprints.shape[0] - 1, -1, -1):
        vis[k] &= ~covered
        covered |= footprints[k]
    return vis


def label_maps(visible: np.ndarray, class_ids: Sequence[int], sounding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class-index maps of one frame: sounding objects (the ground-truth mask) and every visible object.

    Args:
        visible: (K, H, W) bool visible footprints (disjoint).
        class_ids: (K,) 1-based class ids.
        sounding: (K,) bool: which objects sound during this frame's second.

    Returns:
        ((H, W) uint8 mask of sounding objects, (H, W) uint8 map of all visible objects); 0 = background.
    """
    mask = np.zeros(visible.shape[1:], np.uint8)
    vis = np.zeros(visible.shape[1:], np.uint8)
    for k, c in enumerate(class_ids):
        vis[visible[k]] = c
        if sounding[k]:
            mask[visible[k]] = c
    return mask, vis


# ------------------------------------------------------------------------------------------------------- stats


def _hist(counter: Counter) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


class SceneStats:
    """Accumulates data-set statistics frame by frame (see `add_sample` / `add_frame`), reported by `as_dict`.

    Objects per frame and silent distractors need the map of every visible object; sources per frame need the
    per-frame sounding classes. Only frames that carry a ground-truth mask count towards the sounding statistics.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        self.clips = 0
        self.frames = 0
        self.clips_per_split: Counter = Counter()
        self.clips_per_subset: Counter = Counter()
        self.clip_labels = np.zeros(len(classes), np.int64)  # clips labelled with each class
        self.masked_frames = 0  # frames with a ground-truth mask
        self.sources_hist: Counter = Counter()  # sounding objects per masked frame
        self.objects_hist: Counter = Counter()  # visible objects per frame (when known)
        self.visible_known_frames = 0  # masked frames that also have a visible map
        self.visible_objects = 0  # visible objects summed over those frames
        self.silent_visible = 0  # ... of which silent (distractors)
        self.frames_with_distractor = 0
        self.fg_sum = 0.0  # sum of mask foreground fractions over masked frames
        self.sounding_frames = np.zeros(len(classes), np.int64)  # masked frames in which each class sounds
        self.visible_frames = np.zeros(len(classes), np.int64)  # frames in which each class is visible

    def add_frame(self, sounding: set[int] | None, visible: set[int] | None, fg_fraction: float | None) -> None:
        """Count one frame.

        Args:
            sounding: 1-based class ids sounding in it, or None when the frame has no mask.
            visible: 1-based class ids visible in it, or None when unknown.
            fg_fraction: share of mask pixels that are foreground (None without a mask).
        """
        self.frames += 1
        if visible is not None:
            self.objects_hist[len(visible)] += 1
            for c in visible:
                self.visible_frames[c - 1] += 1
        if sounding is None:
            return
        self.masked_frames += 1
        self.sources_hist[len(sounding)] += 1
        self.fg_sum += float(fg_fraction or 0.0)
        for c in sounding:
            self.sounding_frames[c - 1] += 1
        if visible is not None:
            silent = len(visible - sounding)
            self.visible_known_frames += 1
            self.visible_objects += len(visible)
            self.silent_visible += silent
            self.frames_with_distractor += silent > 0

    def add_sample(self, s: Sample, binary: bool = False) -> None:
        """Count one clip's frames.

        Sounding classes of a frame are the mask's class ids; with a binary mask (S4/MS3 on disk) they are the
        visible objects whose pixels are mostly foreground, which needs `s.visible` (without it, a binary frame with
        foreground counts as one source of unknown class and is left out of the per-class counts).
        """
        self.clips += 1
        self.clips_per_split[s.split] += 1
        self.clips_per_subset[s.subset] += 1
        self.clip_labels += s.labels.astype(np.int64)
        for t in range(s.num_frames):
            vis_map = None if s.visible is None else s.visible[t]
            visible = None if vis_map is None else set(np.unique(vis_map[vis_map > 0]).tolist())
            if not s.mask_valid[t]:
                self.add_frame(None, visible, None)
                continue
            m = s.masks[t]
            fg = float((m > 0).mean())
            if not binary:
                sounding = set(np.unique(m[m > 0]).tolist())
            elif vis_map is not None:
                sounding = {c for c in visible if (m[vis_map == c] > 0).mean() >= 0.5}
            else:  # binary mask, no visible map: one source of unknown class when there is foreground
                self.frames += 1
                self.masked_frames += 1
                self.sources_hist[int(fg > 0)] += 1
                self.fg_sum += fg
                continue
            self.add_frame(sounding, visible, fg)

    def as_dict(self) -> dict:
        """The statistics as a JSON-able dict (see `pcas_cli.synth.compute_stats` for the keys)."""
        def share(a: float, b: float) -> float | None:
            return round(a / b, 4) if b else None

        n_obj = sum(self.objects_hist.values())
        mean_obj = sum(k * v for k, v in self.objects_hist.items()) / n_obj if n_obj else None
        n_src = self.masked_frames
        mean_src = sum(k * v for k, v in self.sources_hist.items()) / n_src if n_src else None
        multi = sum(v for k, v in self.sources_hist.items() if k >= 2)
        per_class = {
            name: {
                "clips": int(self.clip_labels[i]),
                "sounding_frames": int(self.sounding_frames[i]),
                "visible_frames": int(self.visible_frames[i]) if n_obj else None,
            }
            for i, name in enumerate(self.classes)
        }
        return {
            "clips": self.clips,
            "frames": self.frames,
            "masked_frames": self.masked_frames,
            "clips_per_split": dict(sorted(self.clips_per_split.items())),
            "clips_per_subset": dict(sorted(self.clips_per_subset.items())),
            "objects_per_frame": {"mean": None if mean_obj is None else round(mean_obj, 4),
                                  "histogram": _hist(self.objects_hist)} if n_obj else None,
            "sources_per_frame": {"mean": None if mean_src is None else round(mean_src, 4),
                                  "histogram": _hist(self.sources_hist)},
            "silent_distractor_share": share(self.silent_visible, self.visible_objects),
            "frames_with_distractor_share": share(self.frames_with_distractor, self.visible_known_frames),
            "multi_source_frame_share": share(multi, n_src),
            "silent_frame_share": share(self.sources_hist[0], n_src),
            "mask_foreground_fraction": share(self.fg_sum, n_src),
            "per_class": per_class,
        }


def split_sizes(videos: int, val_videos: int | None = None, test_videos: int | None = None) -> dict[str, int]:
    """Clips per split: `videos` for train, val/test a quarter of it (at least 1) unless given."""
    quarter = max(1, videos // 4)
    return {"train": videos,
            "val": quarter if val_videos is None else val_videos,
            "test": quarter if test_videos is None else test_videos}


def clip_tasks(layout: str, seed: int, sizes: dict[str, int], subset_mix: tuple[float, float, float],
               splits: Sequence[str] = SPLITS) -> list[tuple[str, int, str]]:
    """(split, index, subset) of every clip of a generated data set, in output order (seeded subset plan)."""
    tasks = []
    for split in splits:
        plan_rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), 2 ** 31]))
        plan = plan_subsets(layout, sizes[split], subset_mix, plan_rng)
        tasks += [(split, i, subset) for i, subset in enumerate(plan)]
    return tasks
