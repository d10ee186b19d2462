"""`pcas build-avdigits`: AV-Digits, an audio-visual segmentation benchmark made of real signals.

Handwritten digits (MNIST) are placed in video frames and some of them are spoken (Free Spoken Digit Dataset, FSDD):
the spoken digits are the sounding objects to segment, the others are silent distractors of the same kind, so only the
audio tells them apart. Unlike `pcas synth`, both modalities are real recordings of people: real handwriting, real
voices. The output uses the exact AVSBench layouts (`--layout avss | s4 | ms3`, splits train/val/test), so every
pipeline stage reads it like `pcas synth` data. Scene mechanics (subsets, schedules, mask rules, statistics) are the
ones of `pcas_cli/scenes.py`, shared with `pcas synth`.

Design
------
- Clips are short videos at 1 frame per second (frame t shows second t), audio 16 kHz mono, 1 s per frame.
  AVSS layout: subsets v1s (5 s, single source), v1m (5 s, multi-source) and v2 (10 s, multi-source), mixed by
  `subset_mix`; S4: 5 s, exactly one digit class sounds per clip; MS3: 5 s multi-source. Classes are the ten digits
  "zero" .. "nine" (class id = digit + 1; 0 = background).
- Each clip shows K handwritten digits of K distinct classes (`digits_per_clip`, at least 2 in multi-source clips;
  two digits of one class would make grounding ambiguous). Each digit is one MNIST image, scaled (`digit_size`: the
  side of the 28-pixel MNIST tile as a fraction of the frame side), tilted (up to `max_rotation` degrees) and
  coloured (a two-colour gradient). Backgrounds are procedural textures: fractal "clouds", marble veins, woven
  fabric, or ruled notebook paper, either light or dark (a luminance band), and the ink takes the opposite band, so
  every digit contrasts with its background by at least 0.3 in luminance. Digits stay in view for the whole clip
  and move a little between seconds (drift up to `max_motion` of the frame side per second, slow rotation and
  scaling); their ink boxes never overlap and stay inside the frame. Each frame gets a little brightness flicker
  and sensor noise.
- A per-second sounding schedule (`pcas_cli.scenes.sample_schedule`: `p_silent_frame`, `p_multi_source`,
  `max_sources`, `p_repeat`) decides which digits are spoken in each second: some seconds are silent, multi-source
  clips have seconds where two digits are spoken over each other, and digits outside the clip's sounding pool never
  speak. At least one second of every clip sounds.
- Audio: every digit has one voice (an FSDD speaker of its split, distinct speakers per digit when the split has
  enough). In each second it sounds, one recording of that speaker saying that digit (a take not yet used in the
  clip when possible) is placed at a random offset inside the second; the recordings of a multi-source second are
  centred within +-0.1 s of each other, so the words overlap. FSDD levels differ a lot between speakers (peaks from
  -40 to 0 dBFS), so each recording is normalised on its own samples (`normalise = "rms"`: RMS `REF_RMS`; "peak":
  peak `PEAK_TO_RMS * REF_RMS`, the median FSDD crest factor, so a typical recording lands at the same RMS), then
  scaled by a per-digit gain (`source_gain_db`) and faded in and out over 4 ms. Speech is mixed at FSDD's 8 kHz,
  resampled once per clip to 16 kHz (torchaudio), and added to clip-level coloured noise (spectral slope 1/f^0.5 ..
  1/f^1.2) at an SNR drawn from `snr_db` (SNR of a 0 dB recording against the noise); a silent second holds only the
  noise floor. Recordings longer than 1 s (20 of FSDD's 3,000) are skipped (`long_recordings = "skip"`, so a spoken
  word always lies entirely inside its second) or cut to their loudest second ("crop").
- Ground truth: the mask of frame t marks the ink of the digits spoken in second t: the pixels where the pasted
  (scaled, rotated) MNIST image exceeds `stroke_threshold` (127: the stroke core), with the digit's class.
  `Sample.visible` (AVSS `visible_semantic`) marks the ink of every digit. Video-level labels (`a_obj`) are the
  digits spoken at some second. As in AVSBench, S4 train and AVSS v1s train clips have a mask for frame 0 only;
  S4/MS3 masks are written binary.
- Splits without leakage: train uses MNIST training images and the FSDD speakers not in `test_speakers`; val and
  test use MNIST test images (val the even indices, test the odd ones; MNIST's test writers are disjoint from its
  training writers) and only the held-out speakers (default "theo": val his even takes, test his odd takes). So
  val and test share no image or recording with each other, and neither shares a writer or a speaker with train;
  val therefore measures the same generalisation as test. `sources.csv` at the root lists, for every clip, second
  and digit, the MNIST image and the FSDD recording used, so anyone can check this.
- Deterministic: clip i of a split is drawn from its own generator seeded by (seed, split, i), with the input lists
  in sorted order: the same seed and inputs give byte-identical files, whatever `workers` is.

Statistics
----------
`pcas build-avdigits --stats` (`compute_stats`). Default config, seed 0, all splits, the MNIST/FSDD copies of
../shared/data; sounding statistics over every frame (before the S4 / v1s-train frame-0 mask restriction):

| statistic                                   | avss (360 clips, 2340 frames) | s4 (360, 1800) | ms3 (360, 1800) |
|---------------------------------------------|-------------------------------|----------------|-----------------|
| digits per frame: mean (histogram 2/3/4)    | 2.98 (750/875/715)            | 3.02           | 3.02            |
| sources per frame: mean (histogram 0/1/2)   | 1.14 (357/1305/678)           | 0.87           | 1.27            |
| visible digits that are silent distractors  | 61.9%                         | 71.3%          | 58.0%           |
| frames with at least one silent distractor  | 91.4%                         | 100%           | 87.5%           |
| multi-source frames                         | 29.0%                         | 0%             | 41.5%           |
| frames with no spoken digit                 | 15.3%                         | 13.3%          | 14.3%           |
| mask foreground fraction (strokes are thin) | 2.1%                          | 1.7%           | 2.4%            |

AVSS subsets: 144 v1s, 108 v1m, 108 v2 clips. Per class (avss): 48-74 labelled clips, 212-319 sounding frames and
615-775 visible frames each. Sources (avss): train speaks with george, jackson, lucas, nicolas and yweweler (1,278
distinct recordings, 717 MNIST training images), val and test with theo only (203 and 200 recordings, 177 and 184
MNIST test images). The default set takes about 25-30 s on 2 busy CPU cores (`workers = 2`), writing included.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import multiprocessing as mp
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
from PIL import Image

from pcas_cli import scenes, synth
from pcas_cli.datasets.sample import Sample
from pcas_cli.errors import PcasError, fail

SAMPLE_RATE = 16000  # output audio rate (AVSBench wavs are 16 kHz)
SOURCE_RATE = 8000  # FSDD's rate: speech is mixed here and resampled once per clip
STATS_FILE = "avdigits.json"  # config, inputs, statistics
MANIFEST_FILE = "sources.csv"  # per clip, second and digit: the MNIST image and FSDD recording used
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REF_RMS = 0.1  # RMS of a 0 dB recording after normalisation
PEAK_TO_RMS = 5.6  # median crest factor (peak / RMS) of the FSDD recordings: "peak" mode's target peak / REF_RMS
OVERLAP_JITTER_S = 0.1  # centres of the words of a multi-source second lie within +- this of a common centre
FADE_S = 0.004  # fade in/out of every placed recording (FSDD files are trimmed tight: avoids clicks)

# Upstream sources for `download` (pinned to the commits of ../shared/data; see its README).
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_ARCHIVE_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.zip"
MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/kelas/mnist/283b387221ab46655e600cfcc25d843bb14292b9/",  # 3 of the 4 files
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# idx file -> (npz key, MD5 of the decompressed file as published for MNIST, header bytes)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("x_train", "6bbc9ace898e44ae57da46a324031adb", 16),
    "train-labels-idx1-ubyte.gz": ("y_train", "a25bea736e30d166cdddb491f175f624", 8),
    "t10k-images-idx3-ubyte.gz": ("x_test", "2646ac647ad5339dbf082846283269ea", 16),
    "t10k-labels-idx1-ubyte.gz": ("y_test", "27ae3e4e09519cfbb04c329615203637", 8),
}
OFFLINE_HINT = ("without internet, drop --download and pass local copies instead: --mnist PATH (an .npz with "
                "x_train, y_train, x_test, y_test) --fsdd PATH (a folder of {digit}_{speaker}_{take}.wav), e.g. "
                "--mnist ../shared/data/mnist/mnist_uint8.npz --fsdd ../shared/data/fsdd/recordings")


# -------------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AVDigitsConfig:
    """`pcas build-avdigits` options (defaults mirrored in stages/build-avdigits.toml)."""

    layout: Literal["avss", "s4", "ms3"] = "avss"  # AVSBench layout to write
    root: Path | None = None  # output folder; None = data/raw/avdigits-{layout}
    mnist: Path = Path("../shared/data/mnist/mnist_uint8.npz")  # MNIST .npz with x_train, y_train, x_test, y_test
    fsdd: Path = Path("../shared/data/fsdd/recordings")  # folder of FSDD {digit}_{speaker}_{take}.wav (8 kHz mono)
    download: bool = False  # fetch MNIST and FSDD into `cache` (needs internet); mnist/fsdd are then not read
    cache: Path = Path("data/cache/avdigits")  # download cache: mnist/mnist_uint8.npz and fsdd/recordings/
    seed: int = 0  # same seed and inputs -> byte-identical data set
    videos: int = 2000  # train clips (240 were memorised by the Looking encoder: results/avdigits-diagnostics.md)
    val_videos: int | None = 60  # val clips; None = videos // 4 (at least 1)
    test_videos: int | None = 60  # test clips; None = videos // 4 (at least 1)
    image_size: int = 128  # frame side in pixels (square frames)
    test_speakers: tuple[str, ...] = ("theo",)  # FSDD speakers held out of train (val: even takes, test: odd)
    digits_per_clip: tuple[int, int] = (2, 4)  # min and max digits in a clip (distinct classes, all visible)
    max_sources: int = 2  # most digits spoken in one second (multi-source subsets)
    p_silent_frame: float = 0.15  # chance that a second has no spoken digit
    p_multi_source: float = 0.5  # multi-source subsets: chance that a non-silent second has >= 2 spoken digits
    p_repeat: float = 0.3  # chance that a second keeps the previous second's speakers (with new takes)
    snr_db: tuple[float, float] = (5.0, 20.0)  # range of the clip's SNR (0 dB recording vs background noise), dB
    source_gain_db: tuple[float, float] = (-6.0, 0.0)  # range of per-digit loudness, dB
    normalise: Literal["rms", "peak"] = "rms"  # per-recording level normalisation before gain and mixing
    long_recordings: Literal["skip", "crop"] = "skip"  # recordings over 1 s: leave out, or keep their loudest second
    digit_size: tuple[float, float] = (0.3, 0.45)  # range of the MNIST tile side, as a fraction of the frame side
    max_rotation: float = 20.0  # initial tilt of a digit: uniform in +- this many degrees
    max_motion: float = 0.04  # most drift per second, as a fraction of the frame side
    stroke_threshold: int = 127  # mask = pasted MNIST intensity (0..255) above this; 127 = stroke core
    subset_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # avss: shares of v1s, v1m, v2 clips
    workers: int = 2  # processes generating clips (<= 1: in this process); the data do not depend on it


def output_root(cfg: AVDigitsConfig) -> Path:
    return Path(cfg.root) if cfg.root is not None else Path("data/raw") / f"avdigits-{cfg.layout}"


def split_sizes(cfg: AVDigitsConfig) -> dict[str, int]:
    return scenes.split_sizes(cfg.videos, cfg.val_videos, cfg.test_videos)


def check_config(cfg: AVDigitsConfig) -> None:
    """Reject configs that cannot produce a valid data set, with a one-line message (inputs are checked later)."""
    lo, hi = cfg.digits_per_clip
    problems = []
    if cfg.layout not in scenes.LAYOUTS:
        problems.append(f"layout must be one of {scenes.LAYOUTS}, got {cfg.layout!r}")
    if not 1 <= lo <= hi <= len(DIGIT_NAMES):
        problems.append(f"digits_per_clip must satisfy 1 <= min <= max <= 10, got {(lo, hi)}")
    if cfg.layout != "s4" and hi < 2:
        problems.append("multi-source layouts need digits_per_clip max >= 2")
    if cfg.videos < 1 or min(split_sizes(cfg).values()) < 0:
        problems.append("videos must be >= 1 and val/test_videos >= 0")
    if cfg.image_size < 32:
        problems.append(f"image_size must be >= 32, got {cfg.image_size}")
    if not cfg.test_speakers:
        problems.append("test_speakers must name at least one FSDD speaker (held out of train)")
    if cfg.max_sources < 1:
        problems.append("max_sources must be >= 1")
    if cfg.workers < 0:
        problems.append(f"workers must be >= 0, got {cfg.workers}")
    for name in ("p_silent_frame", "p_multi_source", "p_repeat", "max_motion"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1]")
    if not 0.1 <= cfg.digit_size[0] <= cfg.digit_size[1] <= 0.7:
        problems.append("digit_size must satisfy 0.1 <= min <= max <= 0.7")
    if not 0 <= cfg.stroke_threshold <= 254:
        problems.append("stroke_threshold must be in 0..254")
    if not 0.0 <= cfg.max_rotation <= 90.0:
        problems.append("max_rotation must be in [0, 90] degrees")
    for name in ("snr_db", "source_gain_db"):
        a, b = getattr(cfg, name)
        if a > b:
            problems.append(f"{name}: min > max")
    if cfg.normalise not in ("rms", "peak"):
        problems.append("normalise must be rms or peak")
    if cfg.long_recordings not in ("skip", "crop"):
        problems.append("long_recordings must be skip or crop")
    if len(cfg.subset_mix) != 3 or min(cfg.subset_mix) < 0 or sum(cfg.subset_mix) <= 0:
        problems.append("subset_mix must be three non-negative shares")
    if problems:
        raise PcasError("build-avdigits config: " + "; ".join(problems))


# -------------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Recording:
    """One FSDD file."""

    file: str  # file name, {digit}_{speaker}_{take}.wav
    digit: int
    speaker: str
    take: int
    frames: int  # samples at the file's own rate
    sample_rate: int


@dataclass(frozen=True)
class Sources:
    """The loaded inputs and the per-split pools they are drawn from."""

    mnist_path: Path
    fsdd_dir: Path
    images: dict[str, np.ndarray]  # "train" / "test" -> (N, 28, 28) uint8 MNIST images
    mnist_pools: dict[str, list[np.ndarray]]  # data set split -> per digit, indices into images[MNIST_SPLIT[split]]
    speech_pools: dict[str, dict[int, dict[str, list[Recording]]]]  # split -> digit -> speaker -> recordings
    recordings: int  # usable recordings (after the long-recording policy)
    skipped: tuple[str, ...]  # files left out (longer than 1 s with long_recordings = "skip")


MNIST_SPLIT = {"train": "train", "val": "test", "test": "test"}  # data set split -> MNIST part its images come from
_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9-]+)_(?P<take>\d+)\.wav$")
_SOURCES: dict[tuple, Sources] = {}  # per process: workers load the inputs once


def input_paths(cfg: AVDigitsConfig) -> tuple[Path, Path]:
    """(MNIST npz, FSDD recordings folder) to read: the configured paths, or the download cache (fetched if needed).

    Raises:
        PcasError: a path is missing (naming it and what is expected), or a download failed.
    """
    if cfg.download:
        return download_mnist(Path(cfg.cache)), download_fsdd(Path(cfg.cache))
    mnist, fsdd = Path(cfg.mnist), Path(cfg.fsdd)
    if not mnist.is_file():
        raise fail(mnist, "MNIST not found: expected an .npz with x_train, y_train, x_test, y_test (28x28 uint8 "
                          "images, 0-9 labels; e.g. ../shared/data/mnist/mnist_uint8.npz or Keras' mnist.npz); "
                          "pass --mnist PATH, or --download to fetch it")
    if (fsdd / "recordings").is_dir():  # the repository root (or ../shared/data/fsdd) is accepted too
        fsdd = fsdd / "recordings"
    if not fsdd.is_dir():
        raise fail(fsdd, "FSDD recordings folder not found: expected a folder of {digit}_{speaker}_{take}.wav files "
                         "(8 kHz mono, e.g. ../shared/data/fsdd/recordings); pass --fsdd PATH, or --download")
    return mnist, fsdd


def load_sources(cfg: AVDigitsConfig) -> Sources:
    """The inputs of `cfg`, loaded once per process, with the split pools (see the module docstring)."""
    mnist, fsdd = input_paths(cfg)
    key = (str(mnist.resolve()), str(fsdd.resolve()), cfg.test_speakers, cfg.long_recordings)
    if key not in _SOURCES:
        images, labels = _read_mnist(mnist)
        recs, skipped = _scan_fsdd(fsdd, cfg.long_recordings)
        _SOURCES[key] = Sources(
            mnist_path=mnist, fsdd_dir=fsdd, images=images, mnist_pools=_mnist_pools(labels, mnist),
            speech_pools=_speech_pools(recs, cfg.test_speakers, fsdd), recordings=len(recs), skipped=skipped,
        )
    return _SOURCES[key]


def _read_mnist(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as d:
            missing = [k for k in keys if k not in d.files]
            if missing:
                raise fail(path, f"MNIST npz lacks array(s) {missing}; expected {', '.join(keys)}")
            arrays = {k: d[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise fail(path, f"cannot read as an MNIST .npz: {e}") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (len(x),):
            raise fail(path, f"x_{part}/y_{part} must be (N, 28, 28) uint8 images and (N,) labels, got "
                             f"{x.shape} {x.dtype} / {y.shape}")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise fail(path, f"y_{part} must hold digits 0-9")
    return ({"train": arrays["x_train"], "test": arrays["x_test"]},
            {"train": arrays["y_train"].astype(np.int64), "test": arrays["y_test"].astype(np.int64)})


def _mnist_pools(labels: dict[str, np.ndarray], path: Path) -> dict[str, list[np.ndarray]]:
    """Per split and digit, the MNIST indices it may use: train all training images; val / test the even / odd test
    images (interleaved, so val and test follow the same distribution: MNIST's first 5,000 test images are easier)."""
    idx = np.arange(len(labels["test"]))
    parts = {"train": np.ones(len(labels["train"]), bool), "val": idx % 2 == 0, "test": idx % 2 == 1}
    pools = {}
    for split, keep in parts.items():
        y = labels[MNIST_SPLIT[split]]
        pools[split] = [np.flatnonzero(keep & (y == d)) for d in range(10)]
        missing = [d for d in range(10) if len(pools[split][d]) == 0]
        if missing:
            raise fail(path, f"no MNIST image of digit(s) {missing} for the {split} split")
    return pools


def _scan_fsdd(folder: Path, long_policy: str) -> tuple[list[Recording], tuple[str, ...]]:
    """Usable recordings (sorted by digit, speaker, take) and the files skipped for being longer than 1 s."""
    import soundfile as sf

    recs, skipped = [], []
    for p in sorted(folder.iterdir()):
        m = _FSDD_NAME.match(p.name)
        if not m:
            continue
        try:
            info = sf.info(str(p))
        except (RuntimeError, sf.LibsndfileError) as e:
            raise fail(p, f"cannot read as a WAV file: {e}") from None
        if info.channels != 1:
            raise fail(p, f"expected a mono recording, got {info.channels} channels")
        if long_policy == "skip" and info.frames > info.samplerate:
            skipped.append(p.name)
            continue
        recs.append(Recording(p.name, int(m["digit"]), m["speaker"], int(m["take"]), info.frames, info.samplerate))
    if not recs:
        raise fail(folder, "no usable {digit}_{speaker}_{take}.wav recordings in this folder (FSDD expected)")
    recs.sort(key=lambda r: (r.digit, r.speaker, r.take))
    return recs, tuple(skipped)


def _speech_pools(recs: list[Recording], test_speakers: Sequence[str], folder: Path
                  ) -> dict[str, dict[int, dict[str, list[Recording]]]]:
    """Split -> digit -> speaker -> recordings: train the other speakers; val / test the held-out speakers' even /
    odd takes."""
    speakers = sorted({r.speaker for r in recs})
    unknown = [s for s in test_speakers if s not in speakers]
    if unknown:
        raise fail(folder, f"test speaker(s) {unknown} have no recordings here; speakers found: {speakers}")
    if not set(speakers) - set(test_speakers):
        raise fail(folder, f"every speaker ({speakers}) is held out in test_speakers; none is left for train")
    pools: dict[str, dict[int, dict[str, list[Recording]]]] = {s: {d: {} for d in range(10)} for s in scenes.SPLITS}
    for r in recs:
        split = "train" if r.speaker not in test_speakers else ("val" if r.take % 2 == 0 else "test")
        pools[split][r.digit].setdefault(r.speaker, []).append(r)
    for split, by_digit in pools.items():
        missing = [d for d in range(10) if not by_digit[d]]
        if missing:
            raise fail(folder, f"no usable recording of digit(s) {missing} for the {split} split "
                               f"(test_speakers {list(test_speakers)})")
    return pools


# ------------------------------------------------------------------------------------------------------ download


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URLs)
        return resp.read()


_NET_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError/HTTPError/timeouts are OSErrors


def download_mnist(cache: Path) -> Path:
    """`cache/mnist/mnist_uint8.npz`, built from the original idx files (MD5-checked) unless already there."""
    from pcas_cli.console import CONSOLE

    out = cache / "mnist" / "mnist_uint8.npz"
    if out.is_file():
        return out
    arrays = {}
    for name, (key, md5, header) in MNIST_FILES.items():
        errors = []
        for mirror in MNIST_MIRRORS:
            url = mirror + name
            try:
                CONSOLE.print(f"downloading {url}")
                raw = gzip.decompress(_fetch(url))
            except (*_NET_ERRORS, EOFError) as e:
                errors.append(f"{url}: {e}")
                continue
            if hashlib.md5(raw).hexdigest() != md5:
                errors.append(f"{url}: MD5 mismatch")
                continue
            arrays[key] = np.frombuffer(raw, np.uint8, offset=header)
            break
        else:
            raise PcasError(f"cannot download MNIST {name} ({'; '.join(errors)}); {OFFLINE_HINT}")
    arrays = {k: (v.reshape(-1, 28, 28) if k.startswith("x") else v) for k, v in arrays.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
        np.savez_compressed(fh, **arrays)
    tmp.replace(out)
    return out


def download_fsdd(cache: Path) -> Path:
    """`cache/fsdd/recordings`, extracted from the pinned upstream archive unless already there."""
    from pcas_cli.console import CONSOLE

    out = cache / "fsdd" / "recordings"
    if out.is_dir():
        return out
    try:
        CONSOLE.print(f"downloading {FSDD_ARCHIVE_URL}")
        archive = zipfile.ZipFile(io.BytesIO(_fetch(FSDD_ARCHIVE_URL, timeout=300)))
    except (*_NET_ERRORS, zipfile.BadZipFile) as e:
        raise PcasError(f"cannot download FSDD from {FSDD_ARCHIVE_URL} ({e}); {OFFLINE_HINT}") from None
    tmp = cache / "fsdd.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "recordings").mkdir(parents=True)
    n = 0
    for member in archive.namelist():
        parts = member.split("/")
        if len(parts) >= 2 and parts[-2] == "recordings" and _FSDD_NAME.match(parts[-1]):
            (tmp / "recordings" / parts[-1]).write_bytes(archive.read(member))  # CRC-checked by zipfile
            n += 1
    if n == 0:
        raise PcasError(f"{FSDD_ARCHIVE_URL}: the archive holds no recordings/*.wav; {OFFLINE_HINT}")
    shutil.rmtree(out.parent, ignore_errors=True)
    tmp.rename(out.parent)
    return out


# ------------------------------------------------------------------------------------------------------ pictures


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luminance weights


def _tone(h: float, s: float, luma: float) -> np.ndarray:
    """An RGB colour of hue `h` and saturation `s` with luminance exactly `luma`.

    Luminance, not HSV value, decides legibility (full-value blue is darker than grey 0.2): the full-value colour is
    scaled down to `luma`, or mixed with white up to it.
    """
    c = _hsv(h, s, 1.0)
    l0 = float(c @ _LUMA)
    if luma <= l0:
        return (c * (luma / l0)).astype(np.float32)
    return (c + (1 - c) * ((luma - l0) / (1 - l0))).astype(np.float32)


# Luminance bands: backgrounds are light or dark, ink the opposite, so ink always contrasts by at least 0.3.
_LIGHT_BG, _DARK_BG = (0.6, 0.92), (0.05, 0.3)
_DARK_INK, _BRIGHT_INK = (0.04, 0.25), (0.62, 0.95)


def _fractal(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Noise with 2-D power spectrum ~ 1/f**beta (2-3: clouds, terrain), scaled to [0, 1]; (size, size) float32."""
    fy = np.fft.fftfreq(size).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape, np.float32) + 1j * rng.standard_normal(f.shape, np.float32)) / f ** (beta / 2)
    spec[0, 0] = 0
    x = np.fft.irfft2(spec, s=(size, size)).astype(np.float32)
    return (x - x.min()) / (x.max() - x.min() + 1e-12)


BACKGROUNDS = ("clouds", "marble", "fabric", "paper")


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, bool]:
    """A textured background, (H, W, 3) float32 in [0, 1], and whether it is light (ink is then dark)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    light = kind == "paper" or bool(rng.random() < 0.5)
    band = _LIGHT_BG if light else _DARK_BG  # both colours in one band: the texture never meets the ink's band
    c0 = _tone(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(*band))
    c1 = _tone(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(*band))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "clouds":
        t = _fractal(rng, size, rng.uniform(2.0, 3.2))
    elif kind == "marble":
        a, k = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 5.0)
        turb = rng.uniform(0.8, 2.5) * _fractal(rng, size, 2.6)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (k * (np.cos(a) * xx + np.sin(a) * yy) + turb))
    elif kind == "fabric":
        p = rng.uniform(5, 10) / size  # thread period
        weft = 0.5 + 0.5 * np.sin(2 * np.pi * xx / p)
        warp = 0.5 + 0.5 * np.sin(2 * np.pi * yy / p)
        over = (np.floor(xx / p) + np.floor(yy / p)) % 2 == 0  # plain weave: threads alternate over / under
        t = 0.6 * np.where(over, weft, warp) + 0.4 * _fractal(rng, size, 2.5)
    else:  # ruled notebook paper with grain
        c0 = _tone(rng.uniform(), rng.uniform(0.0, 0.15), rng.uniform(0.8, 0.94))
        c1 = c0 * np.float32(0.92)
        t = _fractal(rng, size, 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]  # (H, W, 3)
    if kind == "paper":
        gap = max(4, int(size * rng.uniform(0.08, 0.14)))
        rows = (np.arange(size) - int(rng.integers(gap))) % gap == 0
        img[rows] = img[rows] * 0.5 + _hsv(0.58, 0.35, 0.8) * 0.5  # blue rules
        if rng.random() < 0.5:
            img[:, int(size * rng.uniform(0.06, 0.2))] = _hsv(0.98, 0.45, 0.85)  # red margin line
    return np.clip(img, 0, 1).astype(np.float32), light


@dataclass(frozen=True)
class _Digit:
    """One digit's clip-long appearance; its pose at second t comes from `_pose`."""

    digit: int  # 0..9 (class id digit + 1)
    mnist_index: int  # index into the MNIST part of the split
    image: np.ndarray  # (28, 28) uint8
    ink_radius: float  # farthest stroke pixel from the tile centre, MNIST pixels
    scale: float  # output pixels per MNIST pixel at t = 0
    center: np.ndarray  # (2,) y, x at t = 0
    velocity: np.ndarray  # (2,) pixels per second
    angle: float  # degrees at t = 0
    spin: float  # degrees per second
    growth: float  # relative size change per second
    colours: np.ndarray  # (2, 3) ink gradient end colours, RGB in [0, 1]
    gradient: float  # direction of the colour gradient, radians


@dataclass(frozen=True)
class _Pose:
    top: int
    left: int
    ink: np.ndarray  # (P, P) float32 in [0, 1]: the warped MNIST intensity
    stroke: np.ndarray  # (P, P) bool: ink > stroke_threshold
    box: tuple[int, int, int, int]  # stroke bounding box in frame coordinates: y0, x0, y1, x1 (exclusive)


def _warp(image: np.ndarray, scale: float, angle_deg: float) -> np.ndarray:
    """The MNIST tile scaled by `scale` and rotated about its centre, in a (P, P) patch; uint8."""
    side = int(np.ceil(28 * scale * np.sqrt(2))) + 2
    a = np.deg2rad(angle_deg)
    ca, sa = np.cos(a) / scale, np.sin(a) / scale
    half = side / 2
    # PIL's affine maps output pixel centres to input positions: in = A @ (out - half) + 14 (the tile centre).
    data = (ca, sa, 14 - ca * half - sa * half, -sa, ca, 14 + sa * half - ca * half)
    return np.asarray(Image.fromarray(image).transform((side, side), Image.Transform.AFFINE, data,
                                                       resample=Image.Resampling.BICUBIC, fillcolor=0))


def _pose(d: _Digit, t: int, size: int, threshold: int) -> _Pose:
    scale = d.scale * (1 + d.growth * t)
    r = min(d.ink_radius * scale + 1, size / 2)
    cy, cx = np.clip(d.center + d.velocity * t, r, size - r)  # digits stop at the border: ink stays in the frame
    patch = _warp(d.image, scale, d.angle + d.spin * t)  # (P, P)
    side = patch.shape[0]
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    stroke = patch > threshold
    ys, xs = np.nonzero(stroke)
    if len(ys) == 0:  # tiny scales can lose a faint digit: fall back to any ink
        ys, xs = np.nonzero(patch > 0)
        stroke = patch > 0
    box = (top + int(ys.min()), left + int(xs.min()), top + int(ys.max()) + 1, left + int(xs.max()) + 1)
    return _Pose(top, left, patch.astype(np.float32) / 255, stroke, box)


def _draw_digit(rng: np.random.Generator, cfg: AVDigitsConfig, digit: int, index: int, image: np.ndarray,
                light_bg: bool) -> _Digit:
    size = cfg.image_size
    ys, xs = np.nonzero(image > cfg.stroke_threshold)
    radius = float(np.hypot(ys + 0.5 - 14, xs + 0.5 - 14).max()) if len(ys) else 14.0
    scale = rng.uniform(*cfg.digit_size) * size / 28
    speed = rng.uniform(0, cfg.max_motion) * size
    heading = rng.uniform(0, 2 * np.pi)
    r = radius * scale
    hue, sat = rng.uniform(), rng.uniform(0.45, 1.0)
    band = _DARK_INK if light_bg else _BRIGHT_INK
    luma = rng.uniform(*band)
    first = _tone(hue, sat, luma)
    second = _tone(hue + rng.uniform(-0.12, 0.12), sat, float(np.clip(luma + rng.uniform(-0.05, 0.05), *band)))
    return _Digit(
        digit=digit, mnist_index=index, image=image, ink_radius=radius, scale=scale,
        center=rng.uniform(min(r, size / 2), max(size - r, size / 2), 2),
        velocity=speed * np.array([np.sin(heading), np.cos(heading)]),
        angle=rng.uniform(-cfg.max_rotation, cfg.max_rotation), spin=rng.uniform(-2.0, 2.0),
        growth=rng.uniform(-0.02, 0.02), colours=np.stack([first, second]),
        gradient=rng.uniform(0, 2 * np.pi),
    )


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _place(rng: np.random.Generator, cfg: AVDigitsConfig, digits: Sequence[int], indices: Sequence[int],
           images: np.ndarray, T: int, need: int, light_bg: bool) -> tuple[list[_Digit], list[list[_Pose]]]:
    """Place digits one by one so that no two ink boxes come within `gap` pixels in any frame.

    A digit that finds no free spot in 60 draws is left out, unless fewer than `need` digits would remain.

    Returns:
        (digits, poses[t][k]).
    """
    gap = max(1, cfg.image_size // 64)
    placed: list[_Digit] = []
    poses: list[list[_Pose]] = []  # [k][t] while placing
    for j, (d, i) in enumerate(zip(digits, indices)):
        for _ in range(60):
            cand = _draw_digit(rng, cfg, d, i, images[i], light_bg)
            track: list[_Pose] = []
            for t in range(T):  # frame by frame: most rejected candidates already collide at t = 0
                p = _pose(cand, t, cfg.image_size, cfg.stroke_threshold)
                if any(_overlap(p.box, other[t].box, gap) for other in poses):
                    break
                track.append(p)
            if len(track) == T:
                placed.append(cand)
                poses.append(track)
                break
        else:
            if len(placed) + len(digits) - j - 1 < need:
                raise PcasError(f"build-avdigits config: cannot place {need} digits without overlap in a "
                                f"{cfg.image_size}-pixel frame; lower digit_size or digits_per_clip")
    return placed, [[poses[k][t] for k in range(len(placed))] for t in range(T)]


def _blend(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray, top: int, left: int) -> None:
    """canvas = canvas * (1 - alpha) + colour * alpha inside the patch at (top, left), cut at the frame border."""
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    y0, y1, x0, x1 = max(top, 0), min(top + h, H), max(left, 0), min(left + w, W)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top: y1 - top, x0 - left: x1 - left, None]
    c = colour[y0 - top: y1 - top, x0 - left: x1 - left]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + c * a


def _render_frame(rng: np.random.Generator, bg: np.ndarray, digits: list[_Digit], poses: list[_Pose]) -> np.ndarray:
    """Composite one frame: each digit's ink (anti-aliased: alpha = warped intensity) in its colour gradient."""
    img = bg.copy()
    for d, p in zip(digits, poses):
        side = p.ink.shape[0]
        yy, xx = (np.mgrid[0:side, 0:side].astype(np.float32) - side / 2) / (side / 2)
        w = np.clip(0.5 + 0.5 * (np.cos(d.gradient) * xx + np.sin(d.gradient) * yy), 0, 1)[..., None]
        colour = d.colours[0] * (1 - w) + d.colours[1] * w  # (P, P, 3)
        _blend(img, colour, p.ink, p.top, p.left)
    noise = rng.random(img.shape, np.float32) - np.float32(0.5)
    img = img * np.float32(rng.uniform(0.95, 1.05)) + np.float32(0.04) * noise  # flicker + sensor noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class SpeechEvent:
    """One recording placed in a clip."""

    second: int
    obj: int  # index of the digit in the clip
    recording: Recording
    start_s: float  # start within the clip, seconds
    duration_s: float


def _read_recording(folder: Path, rec: Recording, policy: str) -> np.ndarray:
    """The recording at SOURCE_RATE as float32, at most 1 s (crop: its loudest second), faded in and out."""
    import soundfile as sf

    x, rate = sf.read(str(folder / rec.file), dtype="float32")
    if rate != SOURCE_RATE:
        import torch
        from torchaudio.functional import resample

        x = resample(torch.from_numpy(np.ascontiguousarray(x)), rate, SOURCE_RATE).numpy()
    if len(x) > SOURCE_RATE:  # only with policy "crop" (skip leaves long files out of the pools)
        e = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        start = int(np.argmax(e[SOURCE_RATE:] - e[:-SOURCE_RATE]))
        x = x[start: start + SOURCE_RATE]
    n = min(len(x) // 2, int(FADE_S * SOURCE_RATE))
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def normalise(x: np.ndarray, mode: str) -> np.ndarray:
    """Scale a recording to the reference level: RMS REF_RMS ("rms") or peak PEAK_TO_RMS * REF_RMS ("peak")."""
    x64 = x.astype(np.float64)
    level = np.sqrt(np.mean(x64 ** 2)) if mode == "rms" else np.abs(x64).max(initial=0.0) / PEAK_TO_RMS
    return (x64 * (REF_RMS / (level + 1e-12))).astype(np.float32)


def _events(rng: np.random.Generator, schedule: np.ndarray, digits: list[_Digit], speakers: list[str],
            pool: dict[int, dict[str, list[Recording]]]) -> list[SpeechEvent]:
    """Choose and place a recording for every (second, sounding digit); takes are not reused within a clip when
    the speaker has others."""
    used: set[str] = set()
    events = []
    for t in range(schedule.shape[0]):
        objs = np.flatnonzero(schedule[t])
        recs = []
        for k in objs:
            cands = pool[digits[k].digit][speakers[k]]
            fresh = [r for r in cands if r.file not in used] or cands
            r = fresh[int(rng.integers(len(fresh)))]
            used.add(r.file)
            recs.append(r)
        if not recs:
            continue
        lens = [min(r.frames * SOURCE_RATE // r.sample_rate, SOURCE_RATE) for r in recs]
        # One common centre: the words of a multi-source second overlap ("spoken over each other").
        c = rng.uniform(max(lens) / 2, SOURCE_RATE - max(lens) / 2)
        for k, r, n in zip(objs, recs, lens):
            mid = c + (rng.uniform(-OVERLAP_JITTER_S, OVERLAP_JITTER_S) * SOURCE_RATE if len(recs) > 1 else 0)
            start = int(np.clip(round(mid - n / 2), 0, SOURCE_RATE - n))
            events.append(SpeechEvent(t, int(k), r, t + start / SOURCE_RATE, n / SOURCE_RATE))
    return events


def _voices(rng: np.random.Generator, digits: list[_Digit], pool: dict[int, dict[str, list[Recording]]]
            ) -> list[str]:
    """A speaker per digit: distinct while the split has enough speakers, always one who says that digit."""
    all_speakers = sorted({s for by_speaker in pool.values() for s in by_speaker})
    order = [all_speakers[i] for i in rng.permutation(len(all_speakers))]
    voices = []
    for k, d in enumerate(digits):
        s = order[k % len(order)]
        if s not in pool[d.digit]:
            have = sorted(pool[d.digit])
            s = have[int(rng.integers(len(have)))]
        voices.append(s)
    return voices


def _mix(rng: np.random.Generator, cfg: AVDigitsConfig, folder: Path, events: list[SpeechEvent], gains_db: np.ndarray,
         T: int) -> tuple[np.ndarray, float, float]:
    """Speech track at 8 kHz -> 16 kHz, plus coloured noise at the clip's SNR.

    Returns:
        ((T * SAMPLE_RATE,) float32 mix in [-1, 1], noise RMS in the mix, SNR in dB).
    """
    import torch
    from torchaudio.functional import resample

    speech = np.zeros(T * SOURCE_RATE, np.float32)
    for e in events:
        x = normalise(_read_recording(folder, e.recording, cfg.long_recordings), cfg.normalise)
        x = x[: int(round(e.duration_s * SOURCE_RATE))]  # a resampled non-8 kHz file may be a sample longer
        a = int(round(e.start_s * SOURCE_RATE))
        speech[a: a + len(x)] += x * np.float32(10 ** (gains_db[e.obj] / 20))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one 1-D convolution: threads only contend (25x slower on 2 busy cores)
    try:
        speech16 = resample(torch.from_numpy(speech), SOURCE_RATE, SAMPLE_RATE).numpy().astype(np.float64)
    finally:
        torch.set_num_threads(threads)
    snr = float(rng.uniform(*cfg.snr_db))
    noise_rms = REF_RMS * 10 ** (-snr / 20)
    mix = speech16 + scenes.colored_noise(rng, T * SAMPLE_RATE, rng.uniform(0.5, 1.2)) * noise_rms
    peak = float(np.abs(mix).max(initial=0.0))
    if peak > 0.99:  # scale the whole clip: relative levels and SNR are kept
        mix *= 0.99 / peak
        noise_rms *= 0.99 / peak
    return mix.astype(np.float32), float(noise_rms), snr


# -------------------------------------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    """A generated clip with everything known about it (a `Sample` keeps what the layouts store)."""

    sample: Sample  # masks on every frame (mask_valid all True); `synth.to_layout_sample` applies the layout's rule
    schedule: np.ndarray  # (T, K) bool: digit k is spoken in second t
    class_ids: np.ndarray  # (K,) 1-based class id (digit + 1) of each digit
    mnist: tuple[tuple[str, int], ...]  # (K,) MNIST part ("train" / "test") and index of each digit's image
    voices: tuple[str, ...]  # (K,) FSDD speaker of each digit
    events: tuple[SpeechEvent, ...]  # every placed recording
    noise_rms: float  # RMS of the background noise in the waveform
    snr_db: float  # the clip's SNR


def generate_clip(cfg: AVDigitsConfig, split: str, index: int, subset: str) -> Clip:
    """Generate clip `index` of `split` (deterministic in cfg.seed, split, index, subset, options and inputs)."""
    src = load_sources(cfg)
    spec = scenes.SUBSETS[subset]
    T, size = spec.num_frames, cfg.image_size
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, scenes.SPLITS.index(split), index]))
    lo, hi = cfg.digits_per_clip
    need = 2 if spec.multi_source else 1  # a multi-source clip needs two digits that can speak together
    lo = min(max(lo, need), hi)
    k = int(rng.integers(lo, hi + 1))
    chosen = rng.choice(10, size=k, replace=False)  # distinct classes
    mnist_part = MNIST_SPLIT[split]
    indices = [int(rng.choice(src.mnist_pools[split][d])) for d in chosen]
    bg, light = _background(rng, size)
    digits, poses = _place(rng, cfg, chosen.tolist(), indices, src.images[mnist_part], T, need, light)
    k = len(digits)
    class_ids = np.array([d.digit + 1 for d in digits])
    order = rng.permutation(k)  # single-source clips: the speaking digit is a random one
    sched_perm = scenes.sample_schedule(rng, k, T, spec.multi_source, cfg.p_silent_frame, cfg.p_multi_source,
                                        cfg.max_sources, cfg.p_repeat)
    schedule = np.zeros_like(sched_perm)
    schedule[:, order] = sched_perm  # (T, K)

    frames = np.stack([_render_frame(rng, bg, digits, poses[t]) for t in range(T)])  # (T, H, W, 3)
    maps = []
    for t in range(T):
        foot = np.stack([scenes.paste(np.zeros((size, size, 1), bool), p.stroke[..., None], p.stroke, p.top, p.left)
                         for p in poses[t]])  # (K, H, W)
        maps.append(scenes.label_maps(scenes.visible_footprints(foot), class_ids, schedule[t]))
    masks = np.stack([m for m, _ in maps])  # (T, H, W)
    visible = np.stack([v for _, v in maps])

    pool = src.speech_pools[split]
    voices = _voices(rng, digits, pool)
    events = _events(rng, schedule, digits, voices, pool)
    gains = rng.uniform(*cfg.source_gain_db, k)
    wave, noise_rms, snr = _mix(rng, cfg, src.fsdd_dir, events, gains, T)

    labels = np.zeros(len(DIGIT_NAMES), np.uint8)
    labels[class_ids[schedule.any(axis=0)] - 1] = 1
    sample = Sample(
        clip_id=scenes.clip_uid("avdigits", split, index, subset, T), split=split, subset=subset, frames=frames,
        waveform=wave, sample_rate=SAMPLE_RATE, labels=labels, masks=masks, mask_valid=np.ones(T, bool),
        visible=visible,
    )
    return Clip(sample=sample, schedule=schedule, class_ids=class_ids,
                mnist=tuple((mnist_part, d.mnist_index) for d in digits), voices=tuple(voices),
                events=tuple(events), noise_rms=noise_rms, snr_db=snr)


def clip_tasks(cfg: AVDigitsConfig, splits: Sequence[str] = scenes.SPLITS) -> list[tuple[str, int, str]]:
    """(split, index, subset) of every clip, in output order."""
    return scenes.clip_tasks(cfg.layout, cfg.seed, split_sizes(cfg), cfg.subset_mix, splits)


def _clip_task(args: tuple[AVDigitsConfig, str, int, str]) -> Clip:
    return generate_clip(*args)


_T = TypeVar("_T")
_R = TypeVar("_R")


def _ordered_map(fn: Callable[[_T], _R], tasks: Sequence[_T], workers: int) -> Iterator[_R]:
    """`map(fn, tasks)` over `workers` processes, in order, a bounded number of tasks ahead of the consumer."""
    if workers <= 1 or len(tasks) < 2:
        yield from map(fn, tasks)
        return
    # forkserver/spawn rather than fork: the caller may run threads (the progress bar) that fork would copy mid-lock.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        todo = iter(tasks)
        for task in islice(todo, 4 * workers):
            pending.append(pool.apply_async(fn, (task,)))
        while pending:
            result = pending.popleft().get()
            task = next(todo, None)
            if task is not None:
                pending.append(pool.apply_async(fn, (task,)))
            yield result


def resolved(cfg: AVDigitsConfig) -> AVDigitsConfig:
    """`cfg` reading the inputs actually used (downloaded first when `download`), so workers never download."""
    mnist, fsdd = input_paths(cfg)
    return dataclasses.replace(cfg, mnist=mnist, fsdd=fsdd, download=False)


def generate(cfg: AVDigitsConfig, splits: Sequence[str] = scenes.SPLITS) -> Iterator[Clip]:
    """All clips of the given splits, in order (full masks; see `synth.to_layout_sample`).

    The inputs are checked (and downloaded) here, before any worker starts; every clip has its own seed, so the
    output does not depend on `cfg.workers`.
    """
    check_config(cfg)
    cfg = resolved(cfg)
    load_sources(cfg)  # input errors surface here, once
    yield from _ordered_map(_clip_task, [(cfg, *t) for t in clip_tasks(cfg, splits)], cfg.workers)


# ------------------------------------------------------------------------------------------------ stats, manifest


stats_rows = synth.stats_rows  # same statistics, same rows


def compute_stats(samples_or_root: Iterable[Sample] | str | Path, layout: str | None = None) -> dict:
    """Data-set statistics (keys: see `pcas_cli.synth.compute_stats`), of Samples in memory or of a generated root
    (layout from its avdigits.json unless given)."""
    if not isinstance(samples_or_root, (str, Path)):
        return synth.compute_stats(samples_or_root, DIGIT_NAMES)
    root = Path(samples_or_root)
    if layout is None:
        layout = _read_meta(root)["config"]["layout"]
    return synth.compute_stats(root, DIGIT_NAMES, layout)


def _read_meta(root: Path) -> dict:
    path = root / STATS_FILE
    if not path.is_file():
        raise fail(path, "missing (not a `pcas build-avdigits` data set?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta.get("stats"), dict) or "layout" not in meta.get("config", {}):
            raise KeyError("stats / config.layout")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise fail(path, f"cannot read: {e}") from None
    return meta


def load_stats(root: str | Path) -> dict:
    """The statistics recorded by `run` in `<root>/avdigits.json` (no data is read)."""
    return _read_meta(Path(root))["stats"]


MANIFEST_COLUMNS = ("clip_id", "split", "subset", "second", "digit", "class", "sounding", "mnist_split",
                    "mnist_index", "speaker", "fsdd_file", "start_s", "duration_s")


def manifest_rows(clip: Clip) -> list[list[str]]:
    """`sources.csv` rows of a clip: one per second and visible digit (speech columns empty when it is silent)."""
    s = clip.sample
    spoken = {(e.second, e.obj): e for e in clip.events}
    rows = []
    for t in range(s.num_frames):
        for k, c in enumerate(clip.class_ids):
            e = spoken.get((t, k))
            speech = ([e.recording.speaker, e.recording.file, f"{e.start_s:.4f}", f"{e.duration_s:.4f}"]
                      if e else ["", "", "", ""])
            rows.append([s.clip_id, s.split, s.subset, str(t), str(c - 1), DIGIT_NAMES[c - 1], str(int(e is not None)),
                         clip.mnist[k][0], str(clip.mnist[k][1]), *speech])
    return rows


class _SourceTally:
    """What each split drew from the inputs (speakers, recordings, MNIST images), for the README and avdigits.json."""

    def __init__(self) -> None:
        self.speakers: dict[str, set[str]] = {s: set() for s in scenes.SPLITS}
        self.recordings: dict[str, set[str]] = {s: set() for s in scenes.SPLITS}
        self.images: dict[str, set[tuple[str, int]]] = {s: set() for s in scenes.SPLITS}
        self.events: dict[str, int] = {s: 0 for s in scenes.SPLITS}

    def add(self, clip: Clip) -> None:
        split = clip.sample.split
        self.images[split].update(clip.mnist)
        self.events[split] += len(clip.events)
        for e in clip.events:
            self.speakers[split].add(e.recording.speaker)
            self.recordings[split].add(e.recording.file)

    def as_dict(self) -> dict:
        return {s: {"speakers": sorted(self.speakers[s]), "recordings_used": len(self.recordings[s]),
                    "speech_events": self.events[s], "mnist_images_used": len(self.images[s])}
                for s in scenes.SPLITS}


# --------------------------------------------------------------------------------------------------------- run


def _recorded_config(cfg: AVDigitsConfig) -> dict:
    """The config as recorded in avdigits.json and the README: without `workers`, which does not change the data."""
    from pcas_cli.config import to_dict

    d = to_dict(cfg)
    d.pop("workers")
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inputs_record(src: Sources, cfg: AVDigitsConfig) -> dict:
    speakers = sorted({s for by_digit in src.speech_pools.values() for p in by_digit.values() for s in p})
    return {
        "mnist": {"path": str(src.mnist_path), "sha256": _sha256(src.mnist_path),
                  "train_images": int(len(src.images["train"])), "test_images": int(len(src.images["test"]))},
        "fsdd": {"path": str(src.fsdd_dir), "usable_recordings": src.recordings, "speakers": speakers,
                 "test_speakers": list(cfg.test_speakers), "skipped_longer_than_1s": list(src.skipped)},
    }


def _split_table(cfg: AVDigitsConfig, src: Sources, tally: dict) -> str:
    held = ", ".join(cfg.test_speakers)
    rule = {"train": ("MNIST train (x_train)", f"all but {held}, every take"),
            "val": ("MNIST test, even indices", f"{held}, even takes"),
            "test": ("MNIST test, odd indices", f"{held}, odd takes")}
    sizes = split_sizes(cfg)
    rows = []
    for s in scenes.SPLITS:
        t = tally[s]
        rows.append(f"| {s} | {sizes[s]} | {rule[s][0]} | {rule[s][1]} | {', '.join(t['speakers']) or '-'} | "
                    f"{t['mnist_images_used']} | {t['recordings_used']} |")
    return "\n".join(rows)


def readme_text(cfg: AVDigitsConfig, stats: dict, src: Sources, tally: dict) -> str:
    """The README.md written at the data set's root."""
    stat_lines = "\n".join(f"| {k} | {v} |" for k, v in stats_rows(stats))
    cfg_lines = "\n".join(f"| {k} | {v} |" for k, v in _recorded_config(cfg).items())
    design = __doc__.split("Design\n------\n", 1)[1].split("\nStatistics", 1)[0].strip()
    skipped = (f"{len(src.skipped)} recordings longer than 1 s were left out" if src.skipped
               else "no recording was left out")
    return f"""# AV-Digits: handwritten digits and spoken digits (`pcas build-avdigits`, layout `{cfg.layout}`)

Generated by `pcas build-avdigits` (module `pcas_cli/avdigits.py`) from MNIST and the Free Spoken Digit Dataset;
re-running it with the same configuration and inputs gives byte-identical files. Layout: AVSBench `{cfg.layout}`
(read it with `pcas_cli.datasets.open_dataset("{cfg.layout}", root)` or with the official loaders).
Classes: the digits {", ".join(DIGIT_NAMES)} (class id = digit + 1, 0 = background).
Configuration, inputs (with the MNIST file's SHA-256) and statistics are in `{STATS_FILE}`; `{MANIFEST_FILE}` lists
the sources of every clip.

## Design

{design}

## Splits and sources

| split | clips | MNIST images from | FSDD speakers allowed | speakers used | MNIST images used | recordings used |
|---|---|---|---|---|---|---|
{_split_table(cfg, src, tally)}

FSDD input: {src.recordings} usable recordings ({skipped}; `long_recordings = "{cfg.long_recordings}"`).
`{MANIFEST_FILE}` has one row per clip, second and visible digit, with the columns

    {",".join(MANIFEST_COLUMNS)}

`sounding` is 1 when the digit is spoken in that second; `speaker`, `fsdd_file`, `start_s` (within the clip) and
`duration_s` describe the recording then, and are empty for a silent digit. `mnist_split` / `mnist_index` index the
arrays `x_train` / `x_test` of the MNIST file. Checking for leakage: no `fsdd_file` or speaker of the val/test rows
appears in the train rows, and val/test rows have `mnist_split = test`.

## Statistics

(Frames with a mask counted before the S4 / AVSS-v1s train frame-0 restriction; "objects" are digits.)

| statistic | value |
|---|---|
{stat_lines}

## Configuration

| field | value |
|---|---|
{cfg_lines}

## Licence and attribution

This data set is an adaptation of two data sets, both under ShareAlike licences; it is distributed under
**CC BY-SA 4.0** (https://creativecommons.org/licenses/by-sa/4.0/; CC BY-SA 3.0 allows adaptations under a later
version of the same licence). Keep both attributions when sharing it or data derived from it:

- **MNIST**: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits",
  http://yann.lecun.com/exdb/mnist/ , CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/). The frames
  contain scaled, rotated and coloured MNIST images; the masks are thresholds of them.
- **Free Spoken Digit Dataset (FSDD)**: Zohar Jackson ("Jakobovski") and contributors,
  https://github.com/Jakobovski/free-spoken-digit-dataset , CC BY-SA 4.0. The audio contains level-normalised,
  resampled (8 → 16 kHz) FSDD recordings mixed with generated noise.

Backgrounds, noise, composition and ground truth are generated by `pcas`.
"""


def run(cfg: AVDigitsConfig) -> Path:
    """Build the data set and write it at `output_root(cfg)` (replacing it); returns the root.

    Also writes README.md, avdigits.json (config, inputs, statistics, counts) and sources.csv at the root.

    Raises:
        PcasError: a bad config, missing or malformed inputs, or a failed download (with what to pass instead).
    """
    from pcas_cli.console import CONSOLE, progress
    from pcas_cli.datasets.writers import write_dataset

    check_config(cfg)
    root = output_root(cfg)
    src = load_sources(resolved(cfg))
    stats = scenes.SceneStats(DIGIT_NAMES)
    tally = _SourceTally()
    manifest: list[list[str]] = []
    total = sum(split_sizes(cfg).values())
    start = time.perf_counter()

    def stream() -> Iterator[Sample]:
        with progress(transient=True) as bar:
            task = bar.add_task(f"build-avdigits {cfg.layout}", total=total, info="")
            for clip in generate(cfg):
                stats.add_sample(clip.sample)  # full masks: every second's sounding set counts
                tally.add(clip)
                manifest.extend(manifest_rows(clip))
                bar.update(task, advance=1, info=clip.sample.clip_id)
                yield synth.to_layout_sample(clip.sample)

    try:
        counts = write_dataset(root, cfg.layout, DIGIT_NAMES, stream(), readme=None)
    except ValueError as e:  # a generated sample the writer rejects is a bug or an impossible config
        raise fail(root, f"cannot write the data set: {e}") from None
    result, sources = stats.as_dict(), tally.as_dict()
    meta = {"generator": "pcas build-avdigits", "config": _recorded_config(cfg), "classes": list(DIGIT_NAMES),
            "inputs": _inputs_record(src, cfg), "counts": counts, "sources": sources, "stats": result}
    (root / STATS_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    with open(root / MANIFEST_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        w.writerows(manifest)
    (root / "README.md").write_text(readme_text(cfg, result, src, sources), encoding="utf-8")
    CONSOLE.print(f"wrote {counts['clips']} clips ({counts['frames']} frames, {counts['masks']} masks) to {root} "
                  f"in {time.perf_counter() - start:.1f} s")
    return root
