"""`pcas bench`: speed and memory benchmarks, written to `results/bench.json` and `results/bench.md`.

Speed and memory targets are checked here, not by timed tests (timings on a shared CI machine are noise). Each
benchmark records its numbers with the unit in the key name (`*_mb`, `*_per_s`, `ms_per_frame`, ...), and the run
records the machine (CPU model, cores, torch version and threads, load average, date).

Benchmarks (`BENCHMARKS`):
- memory: `pcas extract` and a full pass of `FrameDataset` over its output, each in a fresh child process, on a
  small and a large synthetic data set (12 and 96 train clips; synth's default frames, extracted at extract's default
  size). Memory must not grow with the number of clips: peak RSS ratio large / small < 1.3 (target). Peak RSS
  includes ~0.5 GB of imported libraries (torch), so that ratio alone would pass even if every clip were kept; the
  sharper check is the *retained fraction*: the extra working memory (peak minus the RSS after warm-up) of the large
  run over the small one, divided by the extra uncompressed clip data. Streaming gives ~0, holding every clip >= 1
  (target < 0.25).
- extract: clips/s and frames/s of `pcas extract` at the default image size (the large memory run, timed in the child
  after a one-clip warm-up, imports excluded).
- models: visual encoder training (forward + backward + AdamW, batch 32) and inference img/s, "vit_tiny_p8" at
  96/112/128 px, "vit_base" at 224 px (inference only, batches of 8: the paper-scale cost); audio encoder (width 192,
  depth 4, non-overlapping patches, TVP prompts) clips/s on 10 s clips.
- crf: dense CRF ms per frame (preset toco_cam) at 96/128/224 px with 2 and 5 labels, serial; `crf_many` with 2
  worker processes vs 1 on 32 frames of 224 px (pool start included), whose outputs must be identical (target).
- metrics: AVSS semantic scoring (224 px, 71 classes) and binary F-score / mIoU frames/s.

`BenchConfig(quick=True)` runs everything on tiny sizes (a few seconds of work; used by tests/test_bench.py).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError
from pcas_cli.stages.extract import ExtractConfig
from pcas_cli.synth import SynthConfig
from pcas_cli.writing import write_json, write_text

BENCHMARKS = ("memory", "extract", "models", "crf", "metrics")
MEMORY_RATIO_MAX = 1.3  # peak RSS large / small: memory flat in the number of clips
RETAINED_FRACTION_MAX = 0.25  # extra working memory / extra clip data: ~0 when streaming, >= 1 when holding clips
REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """`pcas bench` options."""

    out_dir: Path = Path("results")  # writes bench.json and bench.md here
    quick: bool = False  # tiny sizes (seconds instead of minutes): checks the machinery, not the machine
    which: tuple[str, ...] = BENCHMARKS  # benchmarks to run, any of BENCHMARKS
    seed: int = 0  # seeds the synthetic data and every random input


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (full or quick)."""

    memory_videos: tuple[int, int]  # train clips of the small and the large synthetic data set
    synth_size: int  # side of the synthetic frames (the synth default in a full run)
    image_size: int  # side of the extracted frames (the extract default in a full run)
    visual: tuple[tuple[str, int, bool, int, tuple[tuple[str, int], ...]], ...]  # (backbone, px, train?, batch, kw)
    visual_steps: int  # timed steps per visual case (after one warm-up step)
    audio: tuple[int, int, int, int, int]  # (embed_dim, depth, heads, seconds, batch)
    audio_steps: int  # timed audio steps (after one warm-up step)
    crf_sizes: tuple[int, ...]  # frame sides of the serial CRF timing
    crf_labels: tuple[int, ...]  # label counts (background included) of the serial CRF timing
    crf_frames: int  # frames timed per (size, labels)
    crf_parallel: tuple[int, int, int]  # (frames, side, labels) of the crf_many comparison
    metric_frames: int  # frames scored per metric
    metric_size: int  # frame side of the metric benchmark
    metric_classes: int  # semantic classes, background included (AVSS: 71)


FULL = Sizes(
    memory_videos=(12, 96), synth_size=SynthConfig.image_size, image_size=ExtractConfig.image_size,
    visual=(("vit_tiny_p8", 96, True, 32, ()), ("vit_tiny_p8", 112, True, 32, ()), ("vit_tiny_p8", 128, True, 32, ()),
            ("vit_base", 224, False, 8, ())),
    visual_steps=4, audio=(192, 4, 3, 10, 8), audio_steps=4,
    crf_sizes=(96, 128, 224), crf_labels=(2, 5), crf_frames=6, crf_parallel=(32, 224, 5),
    metric_frames=200, metric_size=224, metric_classes=71,
)
QUICK = Sizes(
    memory_videos=(2, 4), synth_size=32, image_size=24,
    visual=(("vit_tiny_p8", 32, True, 4, (("depth", 1),)), ("vit_tiny_p8", 48, False, 2, (("depth", 1),))),
    visual_steps=1, audio=(32, 1, 1, 2, 2), audio_steps=1,
    crf_sizes=(24,), crf_labels=(2, 3), crf_frames=2, crf_parallel=(4, 24, 3),
    metric_frames=4, metric_size=32, metric_classes=71,
)


# ------------------------------------------------------------------------------------------------------ helpers


def fmt(value: Any) -> str:
    """A number for a table: about 3 significant figures, never an exponent; bools as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            return str(v)
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return "-" if value is None else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through `fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def per_second(count: float, seconds: float) -> float:
    """Throughput; 0 for a zero count, inf when the clock did not move."""
    if count == 0:
        return 0.0
    return float(count) / seconds if seconds > 0 else float("inf")


def retained_fraction(work_small_mb: float, work_large_mb: float, data_small_mb: float, data_large_mb: float) -> float:
    """Share of the extra clip data still held at peak: (extra working memory) / (extra uncompressed data)."""
    extra = data_large_mb - data_small_mb
    if extra <= 0:
        raise ValueError("the large data set must hold more data than the small one")
    return (work_large_mb - work_small_mb) / extra


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _proc_status_kb(key: str) -> int | None:
    """A `VmXXX` line of /proc/self/status in kB (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb() -> int:
    """Peak resident set size of this process in kB (since the last `reset_peak_rss`, where that worked)."""
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, kB on Linux


def current_rss_kb() -> int:
    rss = _proc_status_kb("VmRSS")
    return rss if rss is not None else peak_rss_kb()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (benchmark children, CRF and synth workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and threads, load average, date."""
    import torch

    from pcas_cli.provenance import code_version

    model = platform.processor() or platform.machine()
    mem_kb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": model, "cpu_count": os.cpu_count(), "usable_cores": usable,
        "memory_gb": round(mem_kb / MB, 1) if mem_kb else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "pcas": code_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- child processes (memory, extract)


def _child_extract(spec: dict[str, Any]) -> dict[str, Any]:
    from pcas_cli.stages.extract import run

    cfg = ExtractConfig(layout="avss", root=Path(spec["root"]), run=Path(spec["run"]), splits=("train",),
                        image_size=int(spec["image_size"]))
    run(replace(cfg, run=Path(spec["warm_run"]), limit=1))  # loads the lazily imported libraries first
    reset = reset_peak_rss()
    base = current_rss_kb()
    start = time.perf_counter()
    run(cfg)
    return {"seconds": time.perf_counter() - start, "baseline_rss_kb": base, "peak_rss_kb": peak_rss_kb(),
            "peak_reset": reset}


def _child_read(spec: dict[str, Any]) -> dict[str, Any]:
    from pcas_cli.training.data import FrameDataset

    ds = FrameDataset(spec["features"], fields=("frames", "fbank", "labels"))
    for k in range(min(len(ds), 4)):  # warm-up
        ds[k]
    reset = reset_peak_rss()
    base = current_rss_kb()
    start = time.perf_counter()
    for k in range(len(ds)):
        ds[k]
    return {"seconds": time.perf_counter() - start, "baseline_rss_kb": base, "peak_rss_kb": peak_rss_kb(),
            "peak_reset": reset, "items": len(ds)}


def child_main(spec_path: str) -> None:
    """Entry point of a benchmark child process: run one measured task and write its result JSON."""
    spec = json.loads(Path(spec_path).read_text())
    tasks = {"extract": _child_extract, "read": _child_read}
    Path(spec["result"]).write_text(json.dumps(tasks[spec["task"]](spec)))


def run_child(task: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run `child_main` in a fresh interpreter (its own peak RSS) and return its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / f"{task}.spec.json", workdir / f"{task}.result.json"
    spec_path.write_text(json.dumps({**spec, "task": task, "result": str(result_path)}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    code = "import sys; from pcas_cli.bench import child_main; child_main(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(spec_path)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0 or not result_path.exists():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise PcasError(f"benchmark child '{task}' failed (exit {proc.returncode}): {tail}")
    return json.loads(result_path.read_text())


def clip_nbytes(dims: dict[str, int]) -> int:
    """Uncompressed bytes of one clip's arrays in a features artifact (strings excluded)."""
    from pcas_cli.artifacts import FEATURES

    total = 0
    for field in FEATURES.values():
        if field.dtype == "str":
            continue
        shape = [dims[s] if isinstance(s, str) else s for s in field.shape]
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(field.dtype).itemsize
    return total


class Workspace:
    """Synthetic data sets and child-process measurements, made once per run in a temporary folder."""

    def __init__(self, tmp: Path, sizes: Sizes, seed: int, quick: bool) -> None:
        self.tmp, self.sizes, self.seed, self.quick = tmp, sizes, seed, quick
        self._extracted: dict[int, dict[str, Any]] = {}
        self._read: dict[int, dict[str, Any]] = {}

    def dataset(self, videos: int) -> Path:
        from pcas_cli.synth import run

        root = self.tmp / f"synth-{videos}"
        if not root.exists():
            run(SynthConfig(layout="avss", root=root, seed=self.seed, videos=videos, val_videos=1, test_videos=1,
                            image_size=self.sizes.synth_size, workers=0 if self.quick else 2))
        return root

    def extracted(self, videos: int) -> dict[str, Any]:
        """Measured `pcas extract` of the train split of a `videos`-clip data set (cached)."""
        if videos not in self._extracted:
            from pcas_cli.artifacts import read_features

            root = self.dataset(videos)
            run_dir = self.tmp / f"run-{videos}"
            CONSOLE.print(f"  extract {videos} clips in a child process")
            res = run_child("extract", {"root": str(root), "run": str(run_dir), "warm_run": str(run_dir / "warm"),
                                        "image_size": self.sizes.image_size}, self.tmp / f"child-{videos}")
            features = run_dir / "features" / "train.h5"
            with read_features(features) as r:
                frames = int(np.asarray(r.read("frame_valid", slice(None))).sum())
                res.update(features=str(features), clips=len(r), frames=frames, padded_frames=len(r) * r.dims["T"],
                           data_mb=len(r) * clip_nbytes(r.dims) / MB)
            self._extracted[videos] = res
        return self._extracted[videos]

    def read(self, videos: int) -> dict[str, Any]:
        """Measured full `FrameDataset` pass over the extracted artifact (cached)."""
        if videos not in self._read:
            ext = self.extracted(videos)
            CONSOLE.print(f"  read {ext['frames']} frames with FrameDataset in a child process")
            res = run_child("read", {"features": ext["features"]}, self.tmp / f"child-{videos}")
            res.update(clips=ext["clips"], frames=ext["frames"], data_mb=ext["data_mb"])
            self._read[videos] = res
        return self._read[videos]


# -------------------------------------------------------------------------------------------------- benchmarks


def memory_summary(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Peak / working memory of the two runs, their ratios and the retained fraction."""
    runs = {}
    for name, r in (("small", small), ("large", large)):
        peak, base = r["peak_rss_kb"] / 1024, r["baseline_rss_kb"] / 1024
        runs[name] = {"clips": r["clips"], "frames": r["frames"], "data_mb": r["data_mb"], "peak_rss_mb": peak,
                      "baseline_rss_mb": base, "working_mb": peak - base, "seconds": r["seconds"],
                      "peak_reset": r["peak_reset"]}
    s, lg = runs["small"], runs["large"]
    return {**runs, "peak_ratio": lg["peak_rss_mb"] / s["peak_rss_mb"],
            "working_ratio": lg["working_mb"] / s["working_mb"] if s["working_mb"] > 0 else None,
            "retained_fraction": retained_fraction(s["working_mb"], lg["working_mb"], s["data_mb"], lg["data_mb"])}


def bench_memory(ws: Workspace) -> dict[str, Any]:
    small, large = ws.sizes.memory_videos
    return {"extract": memory_summary(ws.extracted(small), ws.extracted(large)),
            "read": memory_summary(ws.read(small), ws.read(large)), "image_size": ws.sizes.image_size}


def bench_extract(ws: Workspace) -> dict[str, Any]:
    r = ws.extracted(ws.sizes.memory_videos[1])
    return {"image_size": ws.sizes.image_size, "clips": r["clips"], "frames": r["frames"],
            "padded_frames": r["padded_frames"], "seconds": r["seconds"],
            "clips_per_s": per_second(r["clips"], r["seconds"]), "frames_per_s": per_second(r["frames"], r["seconds"])}


def _visual_case(backbone: str, size: int, train: bool, batch: int, kwargs: dict[str, int], steps: int,
                 seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from pcas_cli.models.visual import build_visual_encoder

    num_classes = 70 if backbone == "vit_base" else 8  # AVSS classes at paper scale, synthetic classes otherwise
    g = torch.Generator().manual_seed(seed)
    model = build_visual_encoder(backbone, num_classes, size, **kwargs)
    images = torch.rand(batch, 3, size, size, generator=g)  # (B, 3, H, W)
    labels = (torch.rand(batch, num_classes, generator=g) > 0.5).float()  # (B, C)
    row: dict[str, Any] = {"backbone": backbone, "image_size": size, "batch": batch, "num_classes": num_classes,
                           "params_m": sum(p.numel() for p in model.parameters()) / 1e6, **kwargs}
    if train:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = F.multilabel_soft_margin_loss(model(images).logits, labels)  # ToCo's classification loss
            loss.backward()
            opt.step()

        times = time_calls(step, steps)
        row.update(train_step_s=times, train_img_per_s=per_second(batch, float(np.median(times))))
    model.eval()
    with torch.inference_mode():
        times = time_calls(lambda: model(images), steps)
    row.update(infer_batch_s=times, infer_img_per_s=per_second(batch, float(np.median(times))))
    return row


def _audio_case(embed: int, depth: int, heads: int, seconds: int, batch: int, steps: int,
                seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from pcas_cli.models.audio import AudioEncoder

    num_classes, visual_dim = 8, 192
    g = torch.Generator().manual_seed(seed)
    model = AudioEncoder(num_classes, embed_dim=embed, depth=depth, num_heads=heads, patch_stride=(16, 16),
                         visual_dim=visual_dim, max_seconds=seconds)
    fbank = torch.randn(batch, seconds, model.frames_per_second, model.n_mels, generator=g)  # (B, T, F, M)
    prompt = torch.randn(batch, seconds, visual_dim, generator=g)  # (B, T, Dv): TVP prompts
    labels = (torch.rand(batch, seconds, num_classes, generator=g) > 0.5).float()  # (B, T, C)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(fbank, prompt).logits, labels).backward()
        opt.step()

    train = time_calls(step, steps)
    model.eval()
    with torch.inference_mode():
        infer = time_calls(lambda: model(fbank, prompt), steps)
    return {"embed_dim": embed, "depth": depth, "heads": heads, "seconds": seconds, "batch": batch,
            "tokens_per_clip": 1 + seconds * (model.num_patches + 1), "tvp_prompts": True,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "train_step_s": train, "train_clips_per_s": per_second(batch, float(np.median(train))),
            "infer_batch_s": infer, "infer_clips_per_s": per_second(batch, float(np.median(infer)))}


def bench_models(ws: Workspace) -> dict[str, Any]:
    sz = ws.sizes
    visual = []
    with progress(transient=True) as bar:
        task = bar.add_task("models", total=len(sz.visual) + 1, info="")
        for backbone, size, train, batch, kw in sz.visual:
            bar.update(task, info=f"{backbone} {size}px")
            visual.append(_visual_case(backbone, size, train, batch, dict(kw), sz.visual_steps, ws.seed))
            bar.advance(task)
        bar.update(task, info="audio encoder")
        audio = _audio_case(*sz.audio, steps=sz.audio_steps, seed=ws.seed)
        bar.advance(task)
    return {"visual": visual, "audio": audio, "note": "throughput from the median step; random inputs"}


def _smooth_noise(rng: np.random.Generator, channels: int, size: int, cells: int = 8) -> np.ndarray:
    """(channels, size, size) float32 low-frequency noise: a cells x cells grid upsampled bilinearly."""
    from PIL import Image

    coarse = rng.normal(size=(channels, cells, cells)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c, mode="F").resize((size, size), Image.BILINEAR)) for c in coarse])


def crf_items(n: int, size: int, labels: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """n CRF inputs: synthetic frames with CAM-like probabilities (the visible objects plus smooth noise)."""
    from pcas_cli.synth import generate_clip

    cfg = SynthConfig(image_size=size, workers=0, seed=seed)
    rng = np.random.default_rng(seed)
    items: list[tuple[np.ndarray, np.ndarray, list[int]]] = []
    index = 0
    while len(items) < n:
        sample = generate_clip(cfg, "train", index, "v1m").sample
        index += 1
        for frame, visible in zip(sample.frames, sample.visible):
            channel = np.where(visible > 0, (visible.astype(np.int64) - 1) % (labels - 1) + 1, 0)  # (H, W)
            logits = 2.5 * (np.arange(labels)[:, None, None] == channel[None]) + _smooth_noise(rng, labels, size)
            probs = np.exp(logits - logits.max(0))
            items.append((frame, (probs / probs.sum(0)).astype(np.float32), list(range(1, labels))))
    return items[:n]


def bench_crf(ws: Workspace) -> dict[str, Any]:
    from pcas_cli.crf import CRF_PRESETS, crf_many, dense_crf

    params = CRF_PRESETS["toco_cam"]
    sz = ws.sizes
    serial = []
    for size in sz.crf_sizes:
        for labels in sz.crf_labels:
            items = crf_items(sz.crf_frames, size, labels, ws.seed)
            dense_crf(items[0][0], items[0][1], params)  # warm-up
            times = [time_calls(lambda it=it: dense_crf(it[0], it[1], params), 1, warmup=0)[0] for it in items]
            serial.append({"image_size": size, "labels": labels, "frames": len(items),
                           "ms_per_frame": 1000 * float(np.median(times)),
                           "ms_per_frame_mean": 1000 * float(np.mean(times))})
    n, size, labels = sz.crf_parallel
    items = crf_items(n, size, labels, ws.seed)
    start = time.perf_counter()
    one = list(crf_many(items, params, workers=1))
    t1 = time.perf_counter() - start
    start = time.perf_counter()
    two = list(crf_many(items, params, workers=2, chunksize=max(1, n // 8)))
    t2 = time.perf_counter() - start
    identical = len(one) == len(two) and all(np.array_equal(a, b) for a, b in zip(one, two))
    parallel = {"frames": n, "image_size": size, "labels": labels, "seconds_1_worker": t1, "seconds_2_workers": t2,
                "speedup": t1 / t2, "identical": bool(identical), "note": "2-worker time includes the pool start"}
    return {"preset": "toco_cam", "iterations": params.iterations, "serial": serial, "parallel": parallel}


def blocky_maps(rng: np.random.Generator, n: int, size: int, num_classes: int, cells: int = 7) -> np.ndarray:
    """(n, size, size) uint8 class maps made of cells x cells blocks, 70% background, like AVSS masks."""
    coarse = rng.integers(1, num_classes, size=(n, cells, cells))
    coarse[rng.random((n, cells, cells)) < 0.7] = 0
    rep = -(-size // cells)
    return np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size].astype(np.uint8)


def bench_metrics(ws: Workspace) -> dict[str, Any]:
    from pcas_cli.metrics import BinaryFScore, BinaryMIoU, SemanticScores, binarize

    n, size, classes = ws.sizes.metric_frames, ws.sizes.metric_size, ws.sizes.metric_classes
    rng = np.random.default_rng(ws.seed)
    gt = blocky_maps(rng, n, size, classes)
    pred = np.where(rng.random(gt.shape) < 0.1, blocky_maps(rng, n, size, classes), gt)  # 10% of pixels wrong
    fg_gt = (gt > 0).astype(np.uint8)
    prob = np.clip(0.7 * fg_gt + 0.3 * rng.random(gt.shape), 0, 1).astype(np.float32)
    batch = 20
    out: dict[str, Any] = {"frames": n, "image_size": size, "classes": classes}
    for name, make, update in (
            ("semantic", lambda: SemanticScores(classes), lambda m, s: m.update(pred[s], gt[s])),
            ("binary_fscore", BinaryFScore, lambda m, s: m.update(prob[s], fg_gt[s])),
            ("binary_miou", BinaryMIoU, lambda m, s: m.update(binarize(prob[s]), fg_gt[s]))):
        metric = make()
        start = time.perf_counter()
        for i in range(0, n, batch):
            update(metric, slice(i, i + batch))
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "frames_per_s": per_second(n, seconds)}
    return out


RUNNERS: dict[str, Callable[[Workspace], dict[str, Any]]] = {
    "memory": bench_memory, "extract": bench_extract, "models": bench_models, "crf": bench_crf,
    "metrics": bench_metrics,
}


# ------------------------------------------------------------------------------------------------------ report


def targets(results: dict[str, Any], quick: bool = False) -> list[dict[str, Any]]:
    """Pass/fail of every target whose benchmark ran. `passed` is None for the memory targets of a quick run: a few
    tiny clips hold less data than the allocator's noise, so their ratios say nothing."""
    out = []
    mem = results.get("memory")
    if mem:
        for what in ("extract", "read"):
            m = mem[what]
            ratio, kept = m["peak_ratio"], m["retained_fraction"]
            out.append({"name": f"{what}: peak RSS ratio {m['large']['clips']} / {m['small']['clips']} clips",
                        "value": ratio, "target": f"< {MEMORY_RATIO_MAX}",
                        "passed": None if quick else ratio < MEMORY_RATIO_MAX})
            out.append({"name": f"{what}: retained fraction of the extra clip data", "value": kept,
                        "target": f"< {RETAINED_FRACTION_MAX}",
                        "passed": None if quick else kept < RETAINED_FRACTION_MAX})
    crf = results.get("crf")
    if crf:
        p = crf["parallel"]
        out.append({"name": f"crf_many 2 workers output identical to serial ({p['frames']} frames)",
                    "value": p["identical"], "target": "identical", "passed": p["identical"]})
    return out


def _section_memory(m: dict[str, Any]) -> list[str]:
    rows = []
    for what in ("extract", "read"):
        for size in ("small", "large"):
            r = m[what][size]
            rows.append([what, r["clips"], r["frames"], r["data_mb"], r["baseline_rss_mb"], r["peak_rss_mb"],
                         r["working_mb"], r["seconds"]])
    ratios = [[w, m[w]["peak_ratio"], m[w]["working_ratio"], m[w]["retained_fraction"]] for w in ("extract", "read")]
    return [f"## Memory (child processes, {m['image_size']} px frames)", "",
            markdown_table(["task", "clips", "frames", "clip data MB", "RSS after warm-up MB", "peak RSS MB",
                            "working MB", "s"], rows), "",
            markdown_table(["task", "peak ratio", "working ratio", "retained fraction"], ratios), "",
            "Working = peak minus the RSS after a warm-up; retained fraction = extra working MB / extra clip data MB.",
            ""]


def _section_extract(e: dict[str, Any]) -> list[str]:
    return [f"## Extract throughput ({e['image_size']} px; the large memory run, after a one-clip warm-up)", "",
            markdown_table(["clips", "frames", "s", "clips/s", "frames/s"],
                           [[e["clips"], e["frames"], e["seconds"], e["clips_per_s"], e["frames_per_s"]]]), ""]


def _section_models(m: dict[str, Any]) -> list[str]:
    rows = [[v["backbone"], v["image_size"], v["batch"], v["params_m"], v.get("train_img_per_s"), v["infer_img_per_s"]]
            for v in m["visual"]]
    a = m["audio"]
    arow = [[a["embed_dim"], a["depth"], a["seconds"], a["tokens_per_clip"], a["batch"], a["params_m"],
             a["train_clips_per_s"], a["infer_clips_per_s"]]]
    return ["## Models", "", "Visual encoder (train = forward + backward + AdamW):", "",
            markdown_table(["backbone", "px", "batch", "params M", "train img/s", "inference img/s"], rows), "",
            "Audio encoder (non-overlapping 16x16 patches, TVP prompts):", "",
            markdown_table(["width", "depth", "seconds", "tokens", "batch", "params M", "train clips/s",
                            "inference clips/s"], arow), ""]


def _section_crf(c: dict[str, Any]) -> list[str]:
    rows = [[s["image_size"], s["labels"], s["frames"], s["ms_per_frame"]] for s in c["serial"]]
    p = c["parallel"]
    prow = [[p["frames"], p["image_size"], p["labels"], p["seconds_1_worker"], p["seconds_2_workers"], p["speedup"],
             p["identical"]]]
    return [f"## Dense CRF (preset {c['preset']}, {c['iterations']} iterations)", "",
            markdown_table(["px", "labels", "frames", "ms/frame (median)"], rows), "",
            markdown_table(["frames", "px", "labels", "1 worker s", "2 workers s (incl. pool start)", "speedup",
                            "identical"], prow), ""]


def _section_metrics(m: dict[str, Any]) -> list[str]:
    rows = [[name, m[name]["frames_per_s"]] for name in ("semantic", "binary_fscore", "binary_miou")]
    return [f"## Metrics ({m['frames']} frames, {m['image_size']} px, {m['classes']} semantic classes)", "",
            markdown_table(["metric", "frames/s"], rows), ""]


SECTIONS = {"memory": _section_memory, "extract": _section_extract, "models": _section_models, "crf": _section_crf,
            "metrics": _section_metrics}


def _header(report: dict[str, Any]) -> list[str]:
    """Title, machine line and per-benchmark wall / CPU time and load (contention shows as load > cores)."""
    m = report["machine"]
    runs = "; ".join(f"{k} {fmt(v['seconds'])} / {fmt(v['cpu_seconds'])} / {v['load_average_1min_start']}"
                     for k, v in report["runs"].items())
    return ["# pcas benchmarks" + (" (quick: tiny sizes, not a measurement)" if report["quick"] else ""), "",
            f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores of {m['cpu_count']}, {m['memory_gb']} GB; "
            f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}; {m['date']}; "
            f"load average {m['load_average_start']} at start, {report['load_average_end']} at end; "
            f"total {report['seconds_total']:.0f} s.", "",
            "Per benchmark (wall s / CPU s incl. child processes / 1-min load average at its start; a load above the "
            f"core count means other processes competed for the CPU): {runs}.", ""]


def render_markdown(report: dict[str, Any]) -> str:
    """bench.md: machine line, targets with pass/fail, one section per benchmark."""
    lines = _header(report) + ["## Targets", ""]
    verdict = {True: "PASS", False: "FAIL", None: "not checked (quick)"}
    rows = [[t["name"], t["value"], t["target"], verdict[t["passed"]]] for t in report["targets"]]
    lines += [markdown_table(["target", "value", "required", "result"], rows) if rows else "(none ran)", ""]
    for name in BENCHMARKS:
        if name in report["benchmarks"]:
            lines += SECTIONS[name](report["benchmarks"][name])
    return "\n".join(lines)


def _check(cfg: BenchConfig) -> None:
    unknown = [w for w in cfg.which if w not in BENCHMARKS]
    if unknown or not cfg.which:
        raise PcasError(f"bench: unknown or no benchmarks {unknown}; choose from {list(BENCHMARKS)}")


def run(cfg: BenchConfig) -> Path:
    """Run the selected benchmarks and write `<out_dir>/bench.json` and `bench.md`; returns the JSON path."""
    _check(cfg)
    from pcas_cli.seed import seed_everything

    seed_everything(cfg.seed, deterministic=False)
    sizes = QUICK if cfg.quick else FULL
    start = time.perf_counter()
    machine = machine_info()
    results: dict[str, Any] = {}
    runs: dict[str, Any] = {}  # wall time and load per benchmark: other processes on the machine skew timings
    with tempfile.TemporaryDirectory(prefix="pcas-bench-") as tmp:
        ws = Workspace(Path(tmp), sizes, cfg.seed, cfg.quick)
        for name in BENCHMARKS:
            if name in cfg.which:
                t0, cpu0, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
                CONSOLE.print(f"[bold blue]bench {name}[/bold blue]")
                results[name] = RUNNERS[name](ws)
                runs[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - cpu0,
                              "load_average_1min_start": round(load, 2)}
                CONSOLE.print(f"  done in {runs[name]['seconds']:.1f} s")
    report = {"quick": cfg.quick, "which": list(cfg.which), "seed": cfg.seed, "machine": machine,
              "seconds_total": time.perf_counter() - start,
              "load_average_end": [round(x, 2) for x in os.getloadavg()], "runs": runs, "benchmarks": results,
              "targets": targets(results, cfg.quick)}
    report["all_passed"] = all(t["passed"] is not False for t in report["targets"])
    out = write_json(Path(cfg.out_dir) / "bench.json", report)
    md = write_text(Path(cfg.out_dir) / "bench.md", render_markdown(report) + "\n")
    marks = {True: "[green]PASS[/green]", False: "[red]FAIL[/red]", None: "[yellow]not checked[/yellow]"}
    for t in report["targets"]:
        mark = marks[t["passed"]]
        CONSOLE.print(f"{mark} {t['name']}: {fmt(t['value'])} (required {t['target']})")
    CONSOLE.print(f"[green]wrote[/green] {out} and {md}")
    return out
