"""`pcas synth`: the embedded synthetic audio-visual semantic segmentation data set (the pipeline's default data).

Why synthetic: AVSBench is request-only, so the pipeline needs data anyone can make in seconds on a laptop, in the
exact AVSBench layouts (`--layout avss | s4 | ms3`, splits train/val/test), that is still a real test of
*audio*-visual segmentation: looking alone must not be enough to tell which object to segment.

Design
------
- Clips are short videos at 1 frame per second (frame t shows second t), audio 16 kHz mono, 1 s per frame.
  AVSS layout: subsets v1s (5 s, single source), v1m (5 s, multi-source) and v2 (10 s, multi-source), mixed by
  `subset_mix`; S4: 5 s single source, exactly one sounding class per clip; MS3: 5 s multi-source.
- Each clip holds K objects (`objects_per_frame`, at least 2 in multi-source clips; K distinct classes: two objects
  of one class would make grounding ambiguous) that stay in view for the whole clip and move a little between
  seconds (translation up to `max_motion` of the frame per second, slow rotation, slight scaling), over a cluttered
  static background (a two-colour gradient, low-frequency colour waves, thin lines and small rectangles of random
  colours) with per-frame brightness flicker and sensor noise. Objects occlude each other (random depth order) but
  keep at least `min_visible_fraction` of their area visible in every frame.
- Every class has a visual identity (a shape, a texture drawn in the object's own rotating frame, a hue family) with
  per-object variation (size, position, rotation, hue/saturation/brightness, texture phase) and a sound family with
  its own timbre, pitch range and rhythm, re-drawn per object (pitch, tempo, sweep rate) and per second (onsets).
  See `CLASSES`; `num_classes` takes the first N of them.
- A per-second sounding schedule (`pcas_cli.scenes.sample_schedule`) decides which objects sound in each second:
  some seconds are silent (`p_silent_frame`), multi-source clips have seconds with 2..`max_sources` simultaneous
  sources (`p_multi_source`), only a random pool of the objects (2..K in multi-source clips, one in single-source
  clips) ever sounds, and a second repeats the previous one with `p_repeat`. At least one second of every clip
  sounds. Visible objects that do not sound are *silent distractors*: nothing in the picture tells them apart
  from the sounding ones, only the audio does.
- Audio: each sounding object's sound is gated to its sounding seconds (10 ms ramps inside them) at a per-object gain
  (`source_gain_db`), over clip-level coloured background noise (spectral slope 1/f^0.5..1/f^1.2) at an SNR drawn
  from `snr_db` (SNR of a 0 dB source against the noise); a silent second holds only the noise floor.
- Ground truth: the mask of frame t is the class-index map of the objects sounding in second t (visible pixels
  only); `Sample.visible` (written as `visible_semantic` in the AVSS layout) maps every visible object; video-level
  labels (`a_obj`) are the union of the classes that sound at some second. As in AVSBench, S4 train and AVSS v1s
  train clips have a mask for frame 0 only; S4/MS3 masks are written binary.
- Deterministic: clip i of a split is drawn from its own generator seeded by (seed, split, i), so the same seed gives
  byte-identical data, and `--videos` changes add or remove clips without changing the others (except the AVSS
  subset assignment, which depends on the split size).

Statistics
----------
`pcas synth --stats` (`compute_stats`). Default config, seed 0, all splits; sounding statistics over every frame
(before the S4 / v1s-train frame-0 mask restriction):

| statistic                                   | avss (360 clips, 2340 frames) | s4 (360, 1800) | ms3 (360, 1800) |
|---------------------------------------------|-------------------------------|----------------|-----------------|
| objects per frame: mean (histogram 1/2/3)   | 2.35 (210/1090/1040)          | 2.03           | 2.53            |
| sources per frame: mean (histogram 0/1/2/3) | 1.17 (361/1288/625/66)        | 0.84           | 1.34            |
| visible objects that are silent distractors | 50.3%                         | 58.5%          | 47.1%           |
| frames with at least one silent distractor  | 74.8%                         | 74.6%          | 74.0%           |
| multi-source frames                         | 29.5%                         | 0%             | 44.7%           |
| frames with no sounding object              | 15.4%                         | 15.9%          | 16.0%           |
| mask foreground fraction                    | 9.2%                          | 6.9%           | 10.5%           |

AVSS subsets: 144 v1s, 108 v1m, 108 v2 clips. Per class (avss): 61-83 labelled clips, 296-364 sounding frames and
635-750 visible frames each. Generation of the default avss set takes about 20 s on 2 busy CPU cores (`workers = 2`),
half of it writing the files.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from pcas_cli import scenes
from pcas_cli.datasets.sample import Sample
from pcas_cli.errors import PcasError, fail

SAMPLE_RATE = 16000  # AVSBench wavs are 16 kHz
STATS_FILE = "synth.json"  # generator config + statistics, next to the data set's own files


# ------------------------------------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassSpec:
    """One object class: how it looks and how it sounds."""

    name: str  # readable name (no "_" or spaces: AVSS a_obj joins names with "_")
    shape: str  # key of _SHAPES
    texture: str  # key of _TEXTURES
    hue: float  # centre of the hue family in [0, 1)
    sound: str  # one-line description of the sound family (documentation; the synthesiser is _SOUNDS[name])


CLASSES = (
    ClassSpec("drum", "circle", "rings", 0.00, "low pitch-dropping thumps (55-110 Hz) with a click, 2-4 hits/s"),
    ClassSpec("siren", "triangle", "stripes", 0.08, "harmonic tone swept 0.8-2.5 Hz around 650-1000 Hz"),
    ClassSpec("bird", "star", "dots", 0.15, "3-6 short up-chirps/s at 2.5-3.8 kHz"),
    ClassSpec("frog", "ellipse", "waves", 0.33, "croaks: 110-200 Hz buzz pulsed at 15-25 Hz, 1-2 bursts/s"),
    ClassSpec("whistle", "diamond", "shaded", 0.50, "steady pure tone 1.8-2.8 kHz with vibrato"),
    ClassSpec("engine", "square", "checker", 0.62, "sawtooth 35-70 Hz with 6-14 Hz throb and low rumble"),
    ClassSpec("bell", "hexagon", "spokes", 0.77, "inharmonic decaying partials (500-800 Hz base), 1-2 strikes/s"),
    ClassSpec("clock", "cross", "grid", 0.90, "regular tick-tock clicks at 3-6 Hz"),
    ClassSpec("guitar", "crescent", "stripes", 0.22, "plucked harmonic notes (110-220 Hz base), 1-3 per second"),
    ClassSpec("fan", "ring", "spokes", 0.45, "band noise 250-1300 Hz with 20-40 Hz blade throb"),
    ClassSpec("horn", "heart", "dots", 0.83, "square-wave honks 250-400 Hz, 1-2 per second"),
    ClassSpec("kettle", "bowtie", "checker", 0.56, "high hiss 4.5-7 kHz, slowly swelling"),
)
MIN_CLASSES = 8


# -------------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """`pcas synth` options (defaults mirrored in stages/synth.toml)."""

    layout: Literal["avss", "s4", "ms3"] = "avss"  # AVSBench layout to write
    root: Path | None = None  # output folder; None = data/raw/synth-{layout}
    seed: int = 0  # same seed -> byte-identical data set
    videos: int = 240  # train clips
    val_videos: int | None = None  # val clips; None = videos // 4 (at least 1)
    test_videos: int | None = None  # test clips; None = videos // 4 (at least 1)
    image_size: int = 128  # frame side in pixels (square frames)
    num_classes: int = 8  # object classes used: the first N of CLASSES (8..12)
    objects_per_frame: tuple[int, int] = (1, 3)  # min and max objects in a clip (all visible in every frame)
    max_sources: int = 3  # most objects sounding in one second (multi-source subsets)
    p_silent_frame: float = 0.15  # chance that a second has no sounding object
    p_multi_source: float = 0.5  # multi-source subsets: chance that a non-silent second has >= 2 sources
    p_repeat: float = 0.3  # chance that a second keeps the previous second's sources
    snr_db: tuple[float, float] = (5.0, 20.0)  # range of the clip's SNR (0 dB source vs background noise), dB
    source_gain_db: tuple[float, float] = (-6.0, 0.0)  # range of per-object loudness, dB
    object_scale: tuple[float, float] = (0.15, 0.25)  # range of object radius, as a fraction of the frame side
    max_motion: float = 0.04  # most displacement per second, as a fraction of the frame side
    min_visible_fraction: float = 0.5  # every object keeps at least this share of its area visible in every frame
    clutter: tuple[int, int] = (6, 14)  # range of background clutter items (lines, small rectangles)
    subset_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # avss: shares of v1s, v1m, v2 clips
    workers: int = 2  # processes generating clips (<= 1: in this process); the data do not depend on it


def output_root(cfg: SynthConfig) -> Path:
    return Path(cfg.root) if cfg.root is not None else Path("data/raw") / f"synth-{cfg.layout}"


def split_sizes(cfg: SynthConfig) -> dict[str, int]:
    return scenes.split_sizes(cfg.videos, cfg.val_videos, cfg.test_videos)


def class_names(cfg: SynthConfig) -> tuple[str, ...]:
    return tuple(c.name for c in CLASSES[: cfg.num_classes])


def check_config(cfg: SynthConfig) -> None:
    """Reject configs that cannot produce a valid data set, with a one-line message."""
    lo, hi = cfg.objects_per_frame
    problems = []
    if cfg.layout not in scenes.LAYOUTS:
        problems.append(f"layout must be one of {scenes.LAYOUTS}, got {cfg.layout!r}")
    if not MIN_CLASSES <= cfg.num_classes <= len(CLASSES):
        problems.append(f"num_classes must be in {MIN_CLASSES}..{len(CLASSES)}, got {cfg.num_classes}")
    if not 1 <= lo <= hi <= cfg.num_classes:
        problems.append(f"objects_per_frame must satisfy 1 <= min <= max <= num_classes, got {(lo, hi)}")
    if cfg.videos < 1 or min(split_sizes(cfg).values()) < 0:
        problems.append("videos must be >= 1 and val/test_videos >= 0")
    if cfg.image_size < 16:
        problems.append(f"image_size must be >= 16, got {cfg.image_size}")
    if cfg.workers < 0:
        problems.append("workers must be >= 0")
    if cfg.max_sources < 1:
        problems.append("max_sources must be >= 1")
    for name in ("p_silent_frame", "p_multi_source", "p_repeat", "max_motion"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1]")
    if not 0.0 < cfg.min_visible_fraction <= 1.0:
        problems.append("min_visible_fraction must be in (0, 1]")
    if not 0.02 <= cfg.object_scale[0] <= cfg.object_scale[1] <= 0.5:
        problems.append("object_scale must satisfy 0.02 <= min <= max <= 0.5")
    elif cfg.object_scale[0] * cfg.image_size < 2:
        problems.append("object_scale[0] * image_size must be >= 2 pixels (objects must be visible)")
    for name in ("snr_db", "source_gain_db", "clutter"):
        a, b = getattr(cfg, name)
        if a > b:
            problems.append(f"{name}: min > max")
    if len(cfg.subset_mix) != 3 or min(cfg.subset_mix) < 0 or sum(cfg.subset_mix) <= 0:
        problems.append("subset_mix must be three non-negative shares")
    if problems:
        raise PcasError("synth config: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- shapes, textures
# Both work in the object's local frame: (u, v) = pixel offset from the centre, rotated by the object's angle and
# divided by its radius, so the whole object fits in the unit disc and the texture turns and scales with it.


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.15, -v * 1.15 + 0.12  # the classic (x^2+y^2-1)^3 - x^2 y^3 <= 0, y up, recentred
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


_SQ3 = np.sqrt(3.0)
_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.78,
    "triangle": lambda u, v: (v <= 0.5) & (_SQ3 * u - v <= 1) & (-_SQ3 * u - v <= 1),  # apex up (v points down)
    "star": lambda u, v: np.hypot(u, v) <= 0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u) + np.pi / 2)) ** 2,
    "ellipse": lambda u, v: u * u + (v / 0.6) ** 2 <= 1,
    "diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 1,
    "hexagon": lambda u, v: np.maximum(np.abs(u) * _SQ3 / 2 + np.abs(v) / 2, np.abs(v)) <= 0.9,
    "cross": lambda u, v: ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95)),
    "crescent": lambda u, v: (u * u + v * v <= 1) & ((u - 0.5) ** 2 + v * v > 0.72 ** 2),
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.5 ** 2),
    "heart": _heart,
    "bowtie": lambda u, v: (np.abs(v) <= 0.85 * np.abs(u) + 0.12) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.8),
}

# Texture value in [0, 1]: 0 = the object's main colour, 1 = its dark second colour.
_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "rings": lambda u, v, p: (np.sin(np.hypot(u, v) * 3.5 * np.pi + p) > 0).astype(np.float32),
    "stripes": lambda u, v, p: (np.sin(u * 3.0 * np.pi + p) > 0).astype(np.float32),
    "dots": lambda u, v, p: (((u * 3 + p) % 1 - 0.5) ** 2 + ((v * 3) % 1 - 0.5) ** 2 < 0.07).astype(np.float32),
    "waves": lambda u, v, p: (np.sin(v * 3.0 * np.pi + 1.6 * np.sin(u * 2.5 * np.pi) + p) > 0).astype(np.float32),
    "shaded": lambda u, v, p: np.clip(0.5 + 0.35 * (u + v) + 0.05 * np.sin(p), 0, 1).astype(np.float32),
    "checker": lambda u, v, p: ((np.floor(u * 2.2 + p) + np.floor(v * 2.2)) % 2).astype(np.float32),
    "spokes": lambda u, v, p: (np.sin(np.arctan2(v, u) * 6 + p) > 0).astype(np.float32),
    "grid": lambda u, v, p: (((u * 2.5 + p) % 1 < 0.28) | ((v * 2.5) % 1 < 0.28)).astype(np.float32),
}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


# --------------------------------------------------------------------------------------------------- sounds
# Each synthesiser draws its own per-object parameters from `rng` and returns (n,) float64 at any level (mix_at_snr
# normalises). `n` is a whole number of seconds; per-second events (onsets) are drawn second by second so every
# second of a sounding object carries energy.


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1 / sr)
    band = np.flatnonzero((f >= lo) & (f <= hi))
    spec = np.zeros(len(f), np.complex64)  # white noise's Fourier coefficients, kept only inside the band
    spec.real[band] = rng.standard_normal(len(band), np.float32)
    spec.imag[band] = rng.standard_normal(len(band), np.float32)
    return np.fft.irfft(spec, n).astype(np.float64)


def _wavetable(cycles: np.ndarray, amps: Sequence[float], size: int = 2048) -> np.ndarray:
    """A periodic waveform with the given harmonic amplitudes, read at phase `cycles` (in periods).

    One table lookup per sample instead of one sine per harmonic: the rich engine/horn tones stay cheap.
    """
    x = np.arange(size) / size
    table = sum(a * np.sin(2 * np.pi * (k + 1) * x) for k, a in enumerate(amps))
    return table[((cycles % 1.0) * size).astype(np.int64) % size]


def _add_events(out: np.ndarray, onsets: Iterable[float], sr: int, make: Callable[[np.ndarray, int], np.ndarray],
                dur: float) -> None:
    """Add `make(tau, i)` (tau: time since onset, i: event number) at each onset, cut at the end of `out`."""
    for i, on in enumerate(onsets):
        a = int(on * sr)
        b = min(len(out), a + int(dur * sr))
        if b > a:
            out[a:b] += make(np.arange(b - a) / sr, i)


def _per_second(rng: np.random.Generator, seconds: int, lo: int, hi: int, latest: float) -> list[float]:
    """lo..hi random onsets in every second, none later than `latest` into the second."""
    return sorted(float(s + x) for s in range(seconds) for x in rng.uniform(0, latest, rng.integers(lo, hi + 1)))


def _regular(rng: np.random.Generator, seconds: int, rate: float, jitter: float) -> np.ndarray:
    on = np.arange(rng.uniform(0, 1 / rate), seconds, 1 / rate)
    return np.clip(on + rng.normal(0, jitter, on.shape), 0, None)


def _drum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, decay, rate = rng.uniform(55, 110), rng.uniform(0.08, 0.15), rng.uniform(2, 4)
    out = np.zeros(n)

    tau = np.arange(int(0.4 * sr)) / sr
    f = f0 * (1 + 1.5 * np.exp(-tau / 0.02))  # pitch drops after the strike
    hit = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-tau / decay)
    hit += 0.4 * rng.standard_normal(len(tau)) * np.exp(-tau / 0.006)  # stick click
    _add_events(out, _regular(rng, n // sr, rate, 0.01), sr, lambda t, i: hit[: len(t)] * (0.8 + 0.4 * (i % 2)), 0.4)
    return out


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    fc, dev, lfo = rng.uniform(650, 1000), rng.uniform(180, 320), rng.uniform(0.8, 2.5)
    t = _t(n, sr)
    f = fc + dev * np.sin(2 * np.pi * lfo * t + rng.uniform(0, 2 * np.pi))
    ph = 2 * np.pi * np.cumsum(f) / sr
    return np.sin(ph) + 0.35 * np.sin(2 * ph) + 0.15 * np.sin(3 * ph)


def _bird(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    fa, ratio = rng.uniform(2500, 3800), rng.uniform(1.25, 1.6)
    out = np.zeros(n)

    def chirp(tau: np.ndarray, i: int) -> np.ndarray:
        d = len(tau) / sr
        f = fa * ratio ** (tau / max(d, 1e-3))  # exponential up-sweep
        return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.sin(np.pi * tau / max(d, 1e-3)) ** 2

    for on in _per_second(rng, n // sr, 3, 6, 0.9):
        _add_events(out, [on], sr, chirp, rng.uniform(0.04, 0.09))
    return out


def _frog(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, pulse = rng.uniform(110, 200), rng.uniform(15, 25)
    out = np.zeros(n)

    def croak(tau: np.ndarray, i: int) -> np.ndarray:
        buzz = _wavetable(f0 * tau, [1 / k for k in range(1, 9)])
        return buzz * np.sin(np.pi * pulse * tau) ** 2 * np.sqrt(np.clip(np.sin(np.pi * tau / tau[-1]), 0, None))

    for on in _per_second(rng, n // sr, 1, 2, 0.6):
        _add_events(out, [on], sr, croak, rng.uniform(0.2, 0.4))
    return out


def _whistle(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, vib, depth = rng.uniform(1800, 2800), rng.uniform(4, 7), rng.uniform(0.01, 0.025)
    f = f0 * (1 + depth * np.sin(2 * np.pi * vib * _t(n, sr)))
    ph = 2 * np.pi * np.cumsum(f) / sr
    return np.sin(ph) + 0.1 * np.sin(2 * ph)


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, am = rng.uniform(35, 70), rng.uniform(6, 14)
    t = _t(n, sr)
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t))  # slow rev wander
    saw = _wavetable(np.cumsum(f) / sr, [1 / k for k in range(1, 25)])
    throb = 1 + 0.6 * np.sin(2 * np.pi * am * t)
    rumble = _band_noise(rng, n, sr, 20, 400)
    return saw * throb + 0.4 * rumble / (np.sqrt(np.mean(rumble ** 2)) + 1e-12)


def _bell(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, decay = rng.uniform(500, 800), rng.uniform(0.35, 0.6)
    ratios, amps = (1.0, 2.0, 2.76, 4.07, 5.4), (1.0, 0.6, 0.5, 0.3, 0.2)
    out = np.zeros(n)

    tau = np.arange(sr) / sr
    strike = sum(a * np.sin(2 * np.pi * f0 * r * tau) * np.exp(-tau * (1 + 0.6 * k) / decay)
                 for k, (r, a) in enumerate(zip(ratios, amps)))  # the same bell, struck again and again
    _add_events(out, _per_second(rng, n // sr, 1, 2, 0.5), sr, lambda t, i: strike[: len(t)], 1.0)
    return out


def _clock(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    rate, f1 = rng.uniform(3, 6), rng.uniform(2500, 3500)
    out = np.zeros(n)

    tau = np.arange(int(0.02 * sr)) / sr
    click = 0.5 * rng.standard_normal(len(tau)) * np.exp(-tau / 0.0015)
    ticks = [np.sin(2 * np.pi * f * tau) * np.exp(-tau / 0.004) + click for f in (f1, 0.8 * f1)]  # tick ... tock
    _add_events(out, _regular(rng, n // sr, rate, 0.002), sr, lambda t, i: ticks[i % 2][: len(t)], 0.02)
    return out


def _guitar(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    base, pos = rng.uniform(110, 220), rng.uniform(0.15, 0.3)
    scale = np.array([1, 9 / 8, 5 / 4, 3 / 2, 5 / 3, 2])  # major pentatonic + octave
    out = np.zeros(n)

    tau = np.arange(int(0.8 * sr)) / sr
    decays = [np.exp(-tau * k ** 0.7 / 0.5) for k in range(1, 11)]
    notes: dict[int, np.ndarray] = {}  # one synthesised pluck per note of the scale, reused

    def pluck(t: np.ndarray, i: int) -> np.ndarray:
        j = int(rng.integers(len(scale)))
        if j not in notes:
            f = base * scale[j]
            notes[j] = sum(np.sin(np.pi * k * pos) / k * np.sin(2 * np.pi * k * f * tau) * decays[k - 1]
                           for k in range(1, 11))
        return notes[j][: len(t)]

    _add_events(out, _per_second(rng, n // sr, 1, 3, 0.7), sr, pluck, 0.8)
    return out


def _fan(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lo, blade = rng.uniform(250, 450), rng.uniform(20, 40)
    hi = lo * rng.uniform(2.2, 3.0)
    return _band_noise(rng, n, sr, lo, hi) * (1 + 0.45 * np.sin(2 * np.pi * blade * _t(n, sr)))


def _horn(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(250, 400)
    t = _t(n, sr)
    tone = _wavetable(f0 * t * (1 + 0.004 * np.sin(2 * np.pi * 5 * t)), [1 / k if k % 2 else 0 for k in range(1, 16)])
    env = np.zeros(n)

    def honk(tau: np.ndarray, i: int) -> np.ndarray:
        return np.minimum(1, np.minimum(tau / 0.02, (tau[-1] - tau) / 0.03 + 1e-3))

    for on in _per_second(rng, n // sr, 1, 2, 0.5):
        _add_events(env, [on], sr, honk, rng.uniform(0.25, 0.45))
    return tone * np.minimum(env, 1)


def _kettle(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lo = rng.uniform(4500, 5200)
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * _t(n, sr) + rng.uniform(0, 2 * np.pi))
    return _band_noise(rng, n, sr, lo, min(7000, lo * 1.45)) * swell


_SOUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "drum": _drum, "siren": _siren, "bird": _bird, "frog": _frog, "whistle": _whistle, "engine": _engine,
    "bell": _bell, "clock": _clock, "guitar": _guitar, "fan": _fan, "horn": _horn, "kettle": _kettle,
}


def class_sound(class_index: int, seconds: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A clean, unit-RMS sound of one object of class `CLASSES[class_index]` (0-based), (seconds * sr,) float32."""
    x = _SOUNDS[CLASSES[class_index].name](rng, seconds * sample_rate, sample_rate)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class _Object:
    """One object's clip-long appearance; its pose at second t comes from `_local_frame`."""

    class_index: int  # 0-based into CLASSES
    radius: float  # pixels at t = 0
    center: np.ndarray  # (2,) y, x at t = 0
    velocity: np.ndarray  # (2,) pixels per second
    angle: float  # radians at t = 0
    spin: float  # radians per second
    growth: float  # relative size change per second
    colour: np.ndarray  # (3,) main colour, RGB in [0, 1]
    dark: np.ndarray  # (3,) second texture colour
    phase: float  # texture phase


def _draw_object(rng: np.random.Generator, cfg: SynthConfig, class_index: int) -> _Object:
    size = cfg.image_size
    r = rng.uniform(*cfg.object_scale) * size
    speed = rng.uniform(0, cfg.max_motion) * size
    heading = rng.uniform(0, 2 * np.pi)
    margin = 0.5 * r  # objects may be cut a little by the frame border
    spec = CLASSES[class_index]
    colour = _hsv(spec.hue + rng.normal(0, 0.02), rng.uniform(0.55, 0.95), rng.uniform(0.65, 1.0))
    return _Object(
        class_index=class_index, radius=r, center=rng.uniform(margin, size - margin, 2),
        velocity=speed * np.array([np.sin(heading), np.cos(heading)]), angle=rng.uniform(0, 2 * np.pi),
        spin=rng.uniform(-0.2, 0.2), growth=rng.uniform(-0.03, 0.03), colour=colour,
        dark=colour * rng.uniform(0.25, 0.45), phase=rng.uniform(0, 2 * np.pi),
    )


def _local_frame(obj: _Object, t: int, size: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Object pose at second t: its bounding box corner (top, left) and local coordinates (u, v) and footprint there.

    The box is not clipped to the frame, so `inside.sum()` is the object's full area even when cut by the border.
    """
    r = obj.radius * (1 + obj.growth * t)
    margin = 0.5 * obj.radius
    cy, cx = np.clip(obj.center + obj.velocity * t, margin, size - margin)  # objects stop at the border
    top, left = int(np.floor(cy - r)) - 1, int(np.floor(cx - r)) - 1
    side = int(np.ceil(2 * r)) + 3
    ys = (np.arange(top, top + side) + 0.5 - cy)[:, None]  # pixel centres relative to the object centre
    xs = (np.arange(left, left + side) + 0.5 - cx)[None, :]
    a = obj.angle + obj.spin * t
    u = (np.cos(a) * xs + np.sin(a) * ys) / r  # (side, side)
    v = (-np.sin(a) * xs + np.cos(a) * ys) / r
    inside = _SHAPES[CLASSES[obj.class_index].shape](u, v)
    return top, left, u, v, inside


def _background(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A cluttered static background, (H, W, 3) float32 in [0, 1]."""
    size = cfg.image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = _hsv(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.8))
    c1 = _hsv(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.8))
    a = rng.uniform(0, 2 * np.pi)
    g = np.clip(0.5 + (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)), 0, 1)[..., None]
    img = c0 * (1 - g) + c1 * g  # (H, W, 3)
    for _ in range(3):  # low-frequency colour waves
        kx, ky = (rng.uniform(1, 4, 2) * 2 * np.pi).tolist()  # python floats keep the arrays float32
        img = img + rng.normal(0, 0.05, 3).astype(np.float32) * np.sin(kx * xx + ky * yy + rng.uniform(0, 6))[
            ..., None]
    for _ in range(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1)):
        col = _hsv(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.9))
        if rng.random() < 0.5:  # a thin straight line
            px, py, qx, qy = rng.uniform(0, 1, 4).tolist()
            dx, dy = qx - px, qy - py
            s = np.clip(((xx - px) * dx + (yy - py) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
            dist = np.hypot(xx - px - s * dx, yy - py - s * dy) * size
            hit = dist < rng.uniform(0.5, 1.5)
        else:  # a small rectangle
            h, w = rng.uniform(0.03, 0.09, 2).tolist()
            y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
            hit = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        img[hit] = col
    return np.clip(img, 0, 1).astype(np.float32)


def _place(rng: np.random.Generator, cfg: SynthConfig, class_ids: Sequence[int], T: int
           ) -> tuple[list[_Object], list[list[tuple]], np.ndarray]:
    """Draw objects until each keeps `min_visible_fraction` of its area visible in every frame.

    Returns:
        (objects, per-frame poses [t][k] from `_local_frame`, (T, K, H, W) bool visible footprints), objects in
        back-to-front order. After 20 failed draws the last object is dropped and drawing starts again (a single
        object gets 200 draws before the config is declared impossible).
    """
    size = cfg.image_size
    ids = list(class_ids)
    while True:
        for _ in range(20 if len(ids) > 1 else 200):
            objs = [_draw_object(rng, cfg, c) for c in ids]
            poses = [[_local_frame(o, t, size) for o in objs] for t in range(T)]
            vis = np.zeros((T, len(objs), size, size), bool)
            ok = True
            for t in range(T):
                foot = np.stack([scenes.paste(np.zeros((size, size, 1), bool), m[..., None], m, top, left)
                                 for top, left, _, _, m in poses[t]])  # (K, H, W)
                vis[t] = scenes.visible_footprints(foot)
                areas = np.array([m.sum() for *_, m in poses[t]])
                seen = vis[t].sum(axis=(1, 2))
                if (seen < cfg.min_visible_fraction * areas).any() or (seen == 0).any():
                    ok = False
                    break
            if ok:
                return objs, poses, vis
        if len(ids) == 1:
            raise PcasError("synth config: cannot place even one object; lower min_visible_fraction or object_scale")
        ids = ids[:-1]  # too crowded for this many objects at these sizes


def _render_frame(rng: np.random.Generator, bg: np.ndarray, objs: list[_Object], poses: list[tuple]) -> np.ndarray:
    """Composite one frame back to front; (H, W, 3) uint8."""
    img = bg.copy()
    for o, (top, left, u, v, inside) in zip(objs, poses):
        tex = _TEXTURES[CLASSES[o.class_index].texture](u, v, o.phase)[..., None]  # (h, w, 1)
        shade = 1.0 - 0.15 * np.clip(u + v, -1, 1)[..., None]  # soft light from the top left
        patch = (o.colour * (1 - tex) + o.dark * tex) * shade
        scenes.paste(img, patch.astype(np.float32), inside, top, left)
    noise = rng.random(img.shape, np.float32) - np.float32(0.5)  # uniform sensor noise (cheaper than Gaussian)
    img = img * np.float32(rng.uniform(0.95, 1.05)) + np.float32(0.04) * noise  # flicker + noise (std 0.012)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Clip:
    """A generated clip with everything known about it (a `Sample` keeps what the layouts store)."""

    sample: Sample  # masks on every frame (mask_valid all True); `to_layout_sample` applies the layout's rule
    schedule: np.ndarray  # (T, K) bool: object k sounds in second t
    class_ids: np.ndarray  # (K,) 1-based class id of each object, back to front
    noise_rms: float  # RMS of the background noise in the waveform (the floor of a silent second)


def generate_clip(cfg: SynthConfig, split: str, index: int, subset: str) -> Clip:
    """Generate clip `index` of `split` (deterministic in cfg.seed, split, index, subset and the scene options)."""
    spec = scenes.SUBSETS[subset]
    T, size = spec.num_frames, cfg.image_size
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, scenes.SPLITS.index(split), index]))
    lo, hi = cfg.objects_per_frame
    if spec.multi_source:
        lo = min(max(lo, 2), hi)  # a multi-source clip needs two objects that can sound together
    k = int(rng.integers(lo, hi + 1))
    chosen = rng.choice(cfg.num_classes, size=k, replace=False)  # distinct classes: grounding stays unambiguous
    objs, poses, vis = _place(rng, cfg, chosen, T)
    k = len(objs)
    class_ids = np.array([o.class_index + 1 for o in objs])
    # The sounding object of a single-source clip is object 0 of a random order, not the back-most object.
    order = rng.permutation(k)
    sched_perm = scenes.sample_schedule(rng, k, T, spec.multi_source, cfg.p_silent_frame, cfg.p_multi_source,
                                        cfg.max_sources, cfg.p_repeat)
    schedule = np.zeros_like(sched_perm)
    schedule[:, order] = sched_perm  # (T, K)

    bg = _background(rng, cfg)
    frames = np.stack([_render_frame(rng, bg, objs, poses[t]) for t in range(T)])  # (T, H, W, 3)
    maps = [scenes.label_maps(vis[t], class_ids, schedule[t]) for t in range(T)]
    masks = np.stack([m for m, _ in maps])  # (T, H, W)
    visible = np.stack([v for _, v in maps])

    n = T * SAMPLE_RATE
    sources = np.zeros((k, n), np.float32)
    for j in range(k):
        if schedule[:, j].any():  # objects that never sound need no sound
            sources[j] = class_sound(objs[j].class_index, T, rng)
    gains = rng.uniform(*cfg.source_gain_db, k)
    noise = scenes.colored_noise(rng, n, rng.uniform(0.5, 1.2))
    wave, noise_rms = scenes.mix_at_snr(sources, schedule, gains, noise, rng.uniform(*cfg.snr_db), SAMPLE_RATE)

    labels = np.zeros(cfg.num_classes, np.uint8)
    labels[class_ids[schedule.any(axis=0)] - 1] = 1
    sample = Sample(
        clip_id=scenes.clip_uid("synth", split, index, subset, T), split=split, subset=subset, frames=frames,
        waveform=wave, sample_rate=SAMPLE_RATE, labels=labels, masks=masks, mask_valid=np.ones(T, bool),
        visible=visible,
    )
    return Clip(sample=sample, schedule=schedule, class_ids=class_ids, noise_rms=noise_rms)


def to_layout_sample(s: Sample) -> Sample:
    """Apply the layout's mask rule (S4 / AVSS v1s train: frame 0 only); masks of unannotated frames become 0."""
    valid = scenes.mask_valid(s.subset, s.split, s.num_frames)
    return dataclasses.replace(s, mask_valid=valid, masks=s.masks * valid[:, None, None].astype(np.uint8))


def clip_tasks(cfg: SynthConfig, splits: Sequence[str] = scenes.SPLITS) -> list[tuple[str, int, str]]:
    """(split, index, subset) of every clip, in output order."""
    return scenes.clip_tasks(cfg.layout, cfg.seed, split_sizes(cfg), cfg.subset_mix, splits)


def _clip_task(args: tuple[SynthConfig, str, int, str]) -> Clip:
    return generate_clip(*args)


def generate(cfg: SynthConfig, splits: Sequence[str] = scenes.SPLITS) -> Iterator[Clip]:
    """All clips of the given splits, in order (full masks; see `to_layout_sample`).

    With `cfg.workers > 1` the clips are made by that many worker processes, a few clips ahead of the consumer (the
    writer keeps this process busy meanwhile); every clip has its own seed, so the output does not depend on it.
    """
    check_config(cfg)
    tasks = [(cfg, *t) for t in clip_tasks(cfg, splits)]
    if cfg.workers <= 1 or len(tasks) < 2:
        yield from map(_clip_task, tasks)
        return
    # forkserver/spawn rather than fork: the caller may run threads (the progress bar) that fork would copy mid-lock.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(cfg.workers) as pool:
        pending: deque = deque()
        todo = iter(tasks)
        for task in islice(todo, 4 * cfg.workers):  # a bounded look-ahead keeps memory flat for large data sets
            pending.append(pool.apply_async(_clip_task, (task,)))
        while pending:
            clip = pending.popleft().get()
            task = next(todo, None)
            if task is not None:
                pending.append(pool.apply_async(_clip_task, (task,)))
            yield clip


# ---------------------------------------------------------------------------------------------------- stats


def compute_stats(samples_or_root: Iterable[Sample] | str | Path, classes: Sequence[str] | None = None,
                  layout: str | None = None) -> dict:
    """Data-set statistics.

    Args:
        samples_or_root: Samples in memory (semantic masks), or a generated data set's root (read back from disk
            with `open_dataset`; layout and classes then come from its synth.json when not given).
        classes: class names (background excluded); default: the classes of the root, or CLASSES.
        layout: the root's layout (default: from synth.json).

    Returns:
        clips, frames, masked_frames (frames with a mask), clips_per_split, clips_per_subset;
        objects_per_frame {mean, histogram} (None without visible maps); sources_per_frame {mean, histogram};
        silent_distractor_share (visible objects that are silent / visible objects), frames_with_distractor_share,
        multi_source_frame_share, silent_frame_share, mask_foreground_fraction (mean share of mask pixels);
        per_class {name: {clips (labelled), sounding_frames, visible_frames}}.
        Sounding statistics count only frames with a mask. From disk, S4/MS3 masks are binary and have no visible
        maps: a frame with foreground then counts as one source and per-class sounding counts stay 0.
    """
    if isinstance(samples_or_root, (str, Path)):
        return _stats_from_root(Path(samples_or_root), classes, layout)
    samples = iter(samples_or_root)
    stats: scenes.SceneStats | None = None
    for s in samples:
        if stats is None:
            names = tuple(classes) if classes is not None else tuple(c.name for c in CLASSES[: len(s.labels)])
            stats = scenes.SceneStats(names)
        stats.add_sample(s)
    return (stats or scenes.SceneStats(tuple(classes or ()))).as_dict()


def _stats_from_root(root: Path, classes: Sequence[str] | None, layout: str | None) -> dict:
    from pcas_cli.datasets import open_dataset

    meta_path = root / STATS_FILE
    if layout is None:
        if not meta_path.is_file():
            raise fail(meta_path, "missing (not a `pcas synth` data set?); pass the layout explicitly")
        try:
            layout = json.loads(meta_path.read_text(encoding="utf-8"))["config"]["layout"]
        except (json.JSONDecodeError, KeyError) as e:
            raise fail(meta_path, f"cannot read the layout: {e}") from None
    ds = open_dataset(layout, root)
    names = tuple(classes) if classes is not None else tuple(ds.info.classes)
    stats = scenes.SceneStats(names)
    binary = ds.info.task == "binary"
    for split in scenes.SPLITS:
        for s in ds.iter_split(split):
            stats.add_sample(s, binary=binary)
    return stats.as_dict()


def stats_rows(stats: dict) -> list[tuple[str, str]]:
    """(name, value) rows for printing `compute_stats` output (the CLI puts them in a rich table)."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    opf, spf, splits = stats["objects_per_frame"], stats["sources_per_frame"], stats["clips_per_split"]
    rows = [
        ("clips (per split)", f"{stats['clips']} ({', '.join(f'{k} {v}' for k, v in splits.items())})"),
        ("clips per subset", ", ".join(f"{k} {v}" for k, v in stats["clips_per_subset"].items())),
        ("frames (with mask)", f"{stats['frames']} ({stats['masked_frames']})"),
        ("objects per frame: mean", "n/a" if opf is None else f"{opf['mean']:.2f}"),
        ("objects per frame: histogram", "n/a" if opf is None else _fmt_hist(opf["histogram"])),
        ("sources per frame: mean", "n/a" if spf["mean"] is None else f"{spf['mean']:.2f}"),
        ("sources per frame: histogram", _fmt_hist(spf["histogram"])),
        ("visible objects that are silent distractors", pct(stats["silent_distractor_share"])),
        ("frames with a silent distractor", pct(stats["frames_with_distractor_share"])),
        ("multi-source frames", pct(stats["multi_source_frame_share"])),
        ("frames with no sounding object", pct(stats["silent_frame_share"])),
        ("mask foreground fraction", pct(stats["mask_foreground_fraction"])),
    ]
    for name, c in stats["per_class"].items():
        vis = "n/a" if c["visible_frames"] is None else c["visible_frames"]
        rows.append((f"class {name}", f"clips {c['clips']}, sounding frames {c['sounding_frames']}, "
                                      f"visible frames {vis}"))
    return rows


def _fmt_hist(h: dict[str, int]) -> str:
    return "  ".join(f"{k}: {v}" for k, v in h.items())


# ------------------------------------------------------------------------------------------------------ run


def _recorded_config(cfg: SynthConfig) -> dict:
    """The config as recorded in synth.json and the README: without `workers`, which does not change the data."""
    from pcas_cli.config import to_dict

    d = to_dict(cfg)
    d.pop("workers")
    return d


def readme_text(cfg: SynthConfig, stats: dict) -> str:
    """The README.md written at the data set's root."""
    classes = CLASSES[: cfg.num_classes]
    table = "\n".join(f"| {c.name} | {c.shape} | {c.texture} | {c.hue:.2f} | {c.sound} |" for c in classes)
    stat_lines = "\n".join(f"| {k} | {v} |" for k, v in stats_rows(stats))
    cfg_lines = "\n".join(f"| {k} | {v} |" for k, v in _recorded_config(cfg).items())
    design = __doc__.split("Design\n------\n", 1)[1].split("\nStatistics", 1)[0].strip()
    return f"""# Synthetic audio-visual semantic segmentation data (`pcas synth`, layout `{cfg.layout}`)

Generated by `pcas synth` (module `pcas_cli/synth.py`); re-running it with the same configuration gives
byte-identical files. Layout: AVSBench `{cfg.layout}` (read it with `pcas_cli.datasets.open_dataset("{cfg.layout}",
root)` or with the official loaders). The machine-readable configuration and statistics are in `{STATS_FILE}`.

## Design

{design}

## Classes

| class | shape | texture | hue | sound |
|---|---|---|---|---|
{table}

## Statistics

(Frames with a mask counted before the S4 / AVSS-v1s train frame-0 restriction.)

| statistic | value |
|---|---|
{stat_lines}

## Configuration

| field | value |
|---|---|
{cfg_lines}

## License

Generated data; no third-party content. Free to use (CC0).
"""


def run(cfg: SynthConfig) -> Path:
    """Generate the data set and write it at `output_root(cfg)` (replacing it); returns the root.

    Also writes README.md and synth.json (config, statistics, counts) at the root.
    """
    from pcas_cli.console import CONSOLE, progress
    from pcas_cli.datasets.writers import write_dataset

    check_config(cfg)
    root = output_root(cfg)
    names = class_names(cfg)
    stats = scenes.SceneStats(names)
    total = sum(split_sizes(cfg).values())
    start = time.perf_counter()

    def stream() -> Iterator[Sample]:
        with progress(transient=True) as bar:
            task = bar.add_task(f"synth {cfg.layout}", total=total, info="")
            for clip in generate(cfg):
                stats.add_sample(clip.sample)  # full masks: every second's sounding set counts
                bar.update(task, advance=1, info=clip.sample.clip_id)
                yield to_layout_sample(clip.sample)

    try:
        counts = write_dataset(root, cfg.layout, names, stream(), readme=None)
    except ValueError as e:  # a generated sample the writer rejects is a bug or an impossible config
        raise fail(root, f"cannot write the data set: {e}") from None
    result = stats.as_dict()
    meta = {"generator": "pcas synth", "config": _recorded_config(cfg), "classes": list(names), "counts": counts,
            "stats": result}
    (root / STATS_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (root / "README.md").write_text(readme_text(cfg, result), encoding="utf-8")
    CONSOLE.print(f"wrote {counts['clips']} clips ({counts['frames']} frames, {counts['masks']} masks) to {root} "
                  f"in {time.perf_counter() - start:.1f} s")
    return root


def load_stats(root: str | Path) -> dict:
    """The statistics recorded by `run` in `<root>/synth.json` (no data is read)."""
    path = Path(root) / STATS_FILE
    if not path.is_file():
        raise fail(path, "missing (not a `pcas synth` data set, or generated by an older version)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["stats"]
    except (json.JSONDecodeError, KeyError) as e:
        raise fail(path, f"cannot read statistics: {e}") from None
