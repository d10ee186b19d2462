"""The `pcas` command line: a thin Typer layer. Each command resolves a frozen config and calls one `run(cfg)`.

Option values left unset come from the stage's TOML (`stages/<stage>.toml`, or `--config FILE`), then a preset
overlay (`--preset NAME` = `stages/presets/NAME.toml`), then `--set key=value` for any config field.
No torch code lives here; stage modules are imported lazily so `pcas --help` is fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, List, Optional

import typer

from pcas_cli import __version__
from pcas_cli.errors import PcasError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pcas: weakly supervised audio-visual semantic segmentation (PCAS) as a staged, reproducible pipeline.",
    pretty_exceptions_enable=False,
)

ConfigOpt = typer.Option(None, "--config", help="stage TOML file (default: stages/<stage>.toml if present)")
PresetOpt = typer.Option(None, "--preset", help="overlay stages/presets/NAME.toml (e.g. paper, resnet50)")
SetOpt = typer.Option(None, "--set", help="override any config field: --set key=value (TOML value; dotted keys)")


def _parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise PcasError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def _stage(module: str, cls_name: str, stage: str, config: Path | None, preset: str | None, sets: list[str] | None,
           /, **options: Any) -> Any:
    """Resolve the stage config (options named a__b mean nested field a.b) and call the stage's run(cfg)."""
    from pcas_cli.config import load_config

    mod = importlib.import_module(f"pcas_cli.{module}")
    if "resume" in options and options["resume"] is None:
        options["resume"] = _resume_from_env()
    overrides = {k.replace("__", "."): v for k, v in options.items()}
    overrides.update(_parse_sets(sets))
    cfg = load_config(getattr(mod, cls_name), stage, config, preset, overrides)
    return mod.run(cfg)


RESUME_ENV = "PCAS_RESUME"
_RESUME_VALUES: dict[str, bool | str] = {"auto": "auto", "true": True, "1": True, "false": False, "0": False}


def _resume_from_env() -> bool | str | None:
    """$PCAS_RESUME (auto | true | false) for a training stage run without --resume/--no-resume. The Makefile exports
    auto: an interrupted `make` continues its training where that gives an uninterrupted run's numbers."""
    raw = os.environ.get(RESUME_ENV, "").strip().lower()
    if not raw:
        return None
    if raw not in _RESUME_VALUES:
        raise PcasError(f"{RESUME_ENV}={raw!r}: use auto, true or false")
    return _RESUME_VALUES[raw]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pcas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Run `pcas COMMAND --help` for a command's options. `make reproduce` runs the whole pipeline."""


# Stage name (TOML file stem) -> (module under pcas_cli, config class). Tests load every stages/<name>.toml with it.
STAGE_CONFIGS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "SynthConfig"),
    "build-avdigits": ("avdigits", "AVDigitsConfig"),
    "extract": ("stages.extract", "ExtractConfig"),
    "train-visual": ("stages.train_visual", "TrainVisualConfig"),
    "train-tvp": ("stages.train_tvp", "TrainTVPConfig"),
    "align": ("stages.align", "AlignConfig"),
    "refine": ("stages.refine", "RefineConfig"),
    "pseudo-label": ("stages.pseudo_label", "PseudoLabelConfig"),
    "crf": ("stages.crf", "CRFConfig"),
    "eval": ("stages.evaluate", "EvalConfig"),
    "baseline": ("stages.baseline", "BaselineConfig"),
    "train-supervised": ("stages.train_supervised", "TrainSupervisedConfig"),
    "train-seg": ("stages.train_seg", "TrainSegConfig"),
    "diagnose": ("stages.diagnose", "DiagnoseConfig"),
}

RunOpt = typer.Option(None, "--run", "--run-dir", help="run folder (config default: data/runs/synth-avss)")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (config default: auto)")
ResumeOpt = typer.Option(None, "--resume/--no-resume",
                         help="continue an interrupted run from its last checkpoint (refusing changed settings), or "
                              "start afresh. Unset: $PCAS_RESUME, where auto (make's) continues only a run with the "
                              "same settings, code, libraries and device")
EpochsOpt = typer.Option(None, "--epochs", help="training epochs (from the stage config)")
SeedOpt = typer.Option(None, "--seed", help="random seed (config default: 0)")
LocalWeightsOpt = typer.Option(None, help="local timm-compatible weights file to start from")
# segmenters (upper bound, train-seg) use the same visual backbone as PCAS
SegBackboneOpt = typer.Option(None, help="visual backbone, as train-visual (config default: vit_tiny_p8)")


def _call(stage: str, config: Path | None, preset: str | None, sets: list[str] | None, /, **options: Any) -> Any:
    module, cls_name = STAGE_CONFIGS[stage]
    return _stage(module, cls_name, stage, config, preset, sets, **options)


@app.command()
def synth(
    layout: Optional[str] = typer.Option(None, help="avss | s4 | ms3 (config default: avss)"),
    root: Optional[Path] = typer.Option(None, help="output folder (config default: data/raw/synth-<layout>)"),
    videos: Optional[int] = typer.Option(None, help="training videos; val/test scale with it (from the stage config)"),
    seed: Optional[int] = SeedOpt,
    stats: bool = typer.Option(False, "--stats", help="print the data set's statistics (of --root if it exists)"),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Generate the embedded synthetic audio-visual data set in an exact AVSBench layout."""
    from pcas_cli import synth as synth_mod
    from pcas_cli.config import load_config

    overrides = {"layout": layout, "root": root, "videos": videos, "seed": seed, **_parse_sets(set_)}
    cfg = load_config(synth_mod.SynthConfig, "synth", config, preset, overrides)
    if stats:
        _print_stats(synth_mod, cfg, f"pcas synth --layout {cfg.layout}")
    else:
        synth_mod.run(cfg)


def _print_stats(module: Any, cfg: Any, title: str) -> None:
    """Statistics of a generated data set: recorded ones when it exists on disk, else generated in memory."""
    from rich.table import Table

    from pcas_cli.console import CONSOLE

    root = module.output_root(cfg)
    if (root / module.STATS_FILE).exists():  # what is on disk, whatever other options were given
        stats, where = module.load_stats(root), f"recorded in {root}; generation options not applied"
    else:
        stats, where = module.compute_stats(clip.sample for clip in module.generate(cfg)), "generated in memory"
    table = Table(title=f"{title} ({where})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for label, value in module.stats_rows(stats):
        table.add_row(label, value)
    CONSOLE.print(table)


@app.command("build-avdigits")
def build_avdigits(
    layout: Optional[str] = typer.Option(None, help="avss | s4 | ms3 (config default: avss)"),
    root: Optional[Path] = typer.Option(None, help="output folder (config default: data/raw/avdigits-<layout>)"),
    mnist: Optional[Path] = typer.Option(None, help="MNIST npz with x_train/y_train/x_test/y_test "
                                                    "(config default: ../shared/data/mnist/mnist_uint8.npz)"),
    fsdd: Optional[Path] = typer.Option(None, help="folder of FSDD {digit}_{speaker}_{take}.wav recordings "
                                                   "(config default: ../shared/data/fsdd/recordings)"),
    download: Optional[bool] = typer.Option(None, "--download/--no-download",
                                            help="fetch MNIST and FSDD into the cache first (needs the network)"),
    videos: Optional[int] = typer.Option(None, help="training clips (config default: 2000; val/test: --set "
                                                    "val_videos=N, test_videos=N, default 60 each)"),
    test_speakers: Optional[List[str]] = typer.Option(None, "--test-speakers",
                                                      help="FSDD speaker held out of train for val (even takes) "
                                                           "and test (odd takes); repeat for several (config "
                                                           "default: theo)"),
    seed: Optional[int] = SeedOpt,
    stats: bool = typer.Option(False, "--stats", help="print the data set's statistics (of --root if it exists)"),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """AV-Digits: handwritten MNIST digits that are spoken (FSDD) or silent, in an AVSBench layout."""
    from pcas_cli import avdigits
    from pcas_cli.config import load_config

    overrides = {"layout": layout, "root": root, "mnist": mnist, "fsdd": fsdd, "download": download,
                 "videos": videos, "seed": seed, "test_speakers": test_speakers or None, **_parse_sets(set_)}
    cfg = load_config(avdigits.AVDigitsConfig, "build-avdigits", config, preset, overrides)
    if stats:
        _print_stats(avdigits, cfg, f"pcas build-avdigits --layout {cfg.layout}")
    else:
        avdigits.run(cfg)


@app.command()
def extract(
    layout: Optional[str] = typer.Option(None, help="dataset layout: avss | s4 | ms3 (config default: avss)"),
    root: Optional[Path] = typer.Option(None, help="dataset root (config default: data/raw/synth-avss)"),
    run: Optional[Path] = RunOpt,
    image_size: Optional[int] = typer.Option(None, help="frame size in pixels (square) (config default: 80)"),
    limit: Optional[int] = typer.Option(None, help="at most this many clips per split, 0 = all (config default: 0)"),
    labels_csv: Optional[str] = typer.Option(None, help="MS3 only: AVSS metadata.csv with video labels"),
    test_without_masks: Optional[bool] = typer.Option(
        None, "--test-without-masks/--test-with-masks",
        help="your own videos: test frames may lack masks (labelled, never scored) (config default: with)"),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Features: resized frames, per-second AST fbank, video labels, masks (for scoring) -> HDF5 per split."""
    _call("extract", config, preset, set_, layout=layout, root=root, run=run, image_size=image_size, limit=limit,
          labels_csv=labels_csv, test_without_masks=test_without_masks)


@app.command("train-visual")
def train_visual(
    run: Optional[Path] = RunOpt,
    backbone: Optional[str] = typer.Option(None, help="visual backbone: vit_tiny_p8 | vit_base | resnet50 | "
                                                      "pvt_v2_b2 | any timm name (config default: vit_tiny_p8)"),
    weights: Optional[str] = LocalWeightsOpt,
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="download timm's pretrained weights (needs the network)"),
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
    resume: Optional[bool] = ResumeOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Looking: train the visual encoder to classify frames from video-level labels (ToCo classifier) -> ckpt/visual.pt."""
    _call("train-visual", config, preset, set_, run=run, model__backbone=backbone, model__weights=weights,
          model__pretrained=pretrained, optim__epochs=epochs, optim__seed=seed, device=device, resume=resume)


@app.command("train-tvp")
def train_tvp(
    run: Optional[Path] = RunOpt,
    tvp: Optional[bool] = typer.Option(None, "--tvp/--no-tvp", help="Temporal Visual Prompting on/off (config default: on)"),
    name: Optional[str] = typer.Option(None, help="output stem in ckpt/ (default: tvp, or ast with --no-tvp)"),
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
    resume: Optional[bool] = ResumeOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Listening: per-second audio classification with visual prompts, from video labels (MIL) -> ckpt/tvp.pt."""
    _call("train-tvp", config, preset, set_, run=run, tvp=tvp, name=name, optim__epochs=epochs, optim__seed=seed,
          device=device, resume=resume)


def _contrast_command(stage: str, doc: str) -> None:
    def command(
        run: Optional[Path] = RunOpt,
        name: Optional[str] = typer.Option(None, help=f"output stem in ckpt/ (default: {stage})"),
        init: Optional[str] = typer.Option(None, help="start from ckpt/visual.pt or ckpt/align.pt: visual | align"),
        cmc: Optional[bool] = typer.Option(None, "--cmc/--no-cmc", help="Cross-Modal Contrast (eq. 1)"),
        cmpc: Optional[bool] = typer.Option(None, "--cmpc/--no-cmpc", help="Cross-Modal Patch token Contrast (eq. 2)"),
        cmcc: Optional[bool] = typer.Option(None, "--cmcc/--no-cmcc", help="Cross-Modal Class token Contrast (eq. 3)"),
        epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
        resume: Optional[bool] = ResumeOpt,
        config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
    ) -> None:
        _call(stage, config, preset, set_, run=run, name=name, init=init, cmc=cmc, cmpc=cmpc, cmcc=cmcc,
              optim__epochs=epochs, optim__seed=seed, device=device, resume=resume)

    command.__doc__ = doc
    app.command(stage)(command)


_contrast_command("align", "CMC (eq. 1): align audio tokens, video tokens and class tokens in a shared space -> "
                           "ckpt/align.pt.")
_contrast_command("refine", "CMPC (eq. 2) + CMCC (eq. 3): token-level audio-visual contrast -> ckpt/refine.pt "
                            "(any combination with CMC, for Table 4).")


@app.command("pseudo-label")
def pseudo_label(
    run: Optional[Path] = RunOpt,
    split: Optional[str] = typer.Option(None, help="train | val | test (val first: it picks the thresholds)"),
    weights: Optional[str] = typer.Option(None, help="visual weights ckpt/<name>.pt (config default: refine)"),
    listener: Optional[str] = typer.Option(None, help="listener ckpt/<name>.pt; '' = visual-only CAM baseline "
                                                      "(config default: tvp)"),
    mode: Optional[str] = typer.Option(None, help="cam | similarity (audio-visual similarity baseline)"),
    out: Optional[str] = typer.Option(None, help="output folder under the run (config default: pseudo)"),
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Audio-guided CAMs -> per-frame masks and soft scores -> <out>/<split>.h5."""
    _call("pseudo-label", config, preset, set_, run=run, split=split, weights=weights, listener=listener, mode=mode,
          out=out, device=device)


@app.command()
def crf(
    features: Optional[Path] = typer.Option(None, help="features artifact (RGB frames)"),
    predictions: Optional[Path] = typer.Option(None, help="predictions artifact with soft scores"),
    out: Optional[Path] = typer.Option(None, help="refined predictions artifact"),
    preset: Optional[str] = typer.Option(None, "--crf-preset", help="toco_cam | toco_seg | psa | none, optionally "
                                         "@<sxy_scale>, e.g. psa@0.25 (config default: toco_cam)"),
    choose_on_val: Optional[bool] = typer.Option(None, "--choose-on-val/--fixed-kernel", help="choose the kernel "
                                                 "among `candidates` (and, for pseudo-label's predictions, the "
                                                 "background threshold among `bg_thresholds`) by the mIoU on the "
                                                 "val.h5 next to the features and predictions (stages/crf.toml: on)"),
    workers: Optional[int] = typer.Option(None, help="worker processes, 0 = number of cores (config default: 0)"),
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Dense CRF refinement of soft scores with the RGB frame (pydensecrf, parallel, resumable)."""
    _call("crf", config, None, set_, features=features, predictions=predictions, out=out, preset=preset,
          choose_on_val=choose_on_val, workers=workers)


@app.command("eval")
def evaluate(
    features: Optional[Path] = typer.Option(None, help="features artifact of the scored split"),
    predictions: Optional[Path] = typer.Option(None, help="predictions artifact"),
    out: Optional[Path] = typer.Option(None, help="metrics JSON (default: next to the predictions)"),
    name: Optional[str] = typer.Option(None, help="row label in tables"),
    f_batch_frames: Optional[int] = typer.Option(None, help="official F-score batch in frames (config default: 20)"),
    avss_padded_frames: Optional[bool] = typer.Option(None, "--avss-padded-frames/--no-avss-padded-frames",
                                                      help="official AVSS quirk: also score padded frames"),
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Official AVSBench metrics (mIoU, F-score) of a predictions artifact -> table + JSON."""
    _call("eval", config, None, set_, features=features, predictions=predictions, out=out, name=name,
          f_batch_frames=f_batch_frames, avss_padded_frames=avss_padded_frames)


@app.command()
def baseline(
    run: Optional[Path] = RunOpt,
    kind: Optional[str] = typer.Option(None, help="background | visible (generated data only) (config default: "
                                                  "background)"),
    split: Optional[str] = typer.Option(None, help="split to predict (config default: test)"),
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Reference predictions without training: all background, or every visible object (no audio)."""
    _call("baseline", config, None, set_, run=run, kind=kind, split=split)


@app.command("train-supervised")
def train_supervised(
    run: Optional[Path] = RunOpt,
    backbone: Optional[str] = SegBackboneOpt, weights: Optional[str] = LocalWeightsOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
    resume: Optional[bool] = ResumeOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """FULLY SUPERVISED upper bound: same backbone + FPN decoder on ground-truth train masks -> supervised/*.h5."""
    _call("train-supervised", config, preset, set_, run=run, model__backbone=backbone, model__weights=weights,
          optim__epochs=epochs, optim__seed=seed, device=device, resume=resume)


@app.command("train-seg")
def train_seg(
    run: Optional[Path] = RunOpt,
    labels: Optional[str] = typer.Option(None, help="train pseudo-labels: <run>/<labels>/train.h5 (config default: "
                                                    "crf)"),
    backbone: Optional[str] = SegBackboneOpt, weights: Optional[str] = LocalWeightsOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
    resume: Optional[bool] = ResumeOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Final segmentation network on the train split's PCAS pseudo-labels (upper bound's recipe) -> seg/*.h5."""
    _call("train-seg", config, preset, set_, run=run, labels=labels, model__backbone=backbone, model__weights=weights,
          optim__epochs=epochs, optim__seed=seed, device=device, resume=resume)


@app.command()
def diagnose(
    run: Optional[Path] = RunOpt,
    listener: Optional[str] = typer.Option(None, help="listener ckpt/<name>.pt to examine; '' = skip (config "
                                                      "default: tvp)"),
    probe_steps: Optional[int] = typer.Option(None, help="also train a per-second supervised audio probe for this "
                                                         "many steps (config default: 0 = off)"),
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Why a run does not learn: listener mAP on train vs val vs chance, what align/refine hear, an audio probe."""
    _call("diagnose", config, preset, set_, run=run, listener=listener, probe_steps=probe_steps, device=device)


@app.command()
def report(
    runs: Path = typer.Option(Path("data/runs"), help="folder holding the run folders"),
    out: Path = typer.Option(Path("results"), help="where tables, JSON and pictures go"),
    prefix: str = typer.Option("synth", help="run family: <prefix>-s4, <prefix>-ms3, <prefix>-avss"),
    update_readme: Optional[bool] = typer.Option(None, "--update-readme/--no-update-readme",
                                                 help="refresh README.md's block for this prefix (synth: the "
                                                      "results block; others: <!-- results-PREFIX:start/end --> if "
                                                      "present). Default: only when --out is ./results"),
    table4_seeds: Optional[str] = typer.Option(None, help="Table 4 seeds whose rows are current, e.g. \"0 1 2\" "
                                                          "(Makefile: TABLE4_SEEDS); without 0 Table 4 is left "
                                                          "out. Default: every seed scored"),
) -> None:
    """The paper's tables (1-4), timings and example pictures from the runs' metrics -> <out>/<prefix>.md."""
    from pcas_cli.stages.report import ReportConfig, run as report_run

    report_run(ReportConfig(runs=runs, out=out, prefix=prefix, update_readme=update_readme,
                            table4_seeds=None if table4_seeds is None else _seed_list(table4_seeds)))


def _seed_list(text: str) -> tuple[int, ...]:
    """'0 1 2' -> (0, 1, 2); a clear error for anything else."""
    try:
        return tuple(int(s) for s in text.split())
    except ValueError:
        raise PcasError(f"--table4-seeds: expected seeds separated by spaces, e.g. \"0 1 2\", got {text!r}") from None


@app.command()
def compare(
    reference: Path = typer.Argument(..., help="metrics JSON to compare against (a baseline, or the upper bound)"),
    others: List[Path] = typer.Argument(..., help="metrics JSON files of the rows to compare (same split)"),
    resamples: int = typer.Option(1000, help="bootstrap resamples of the test clips"),
    seed: int = typer.Option(0, help="seed of the resampling (same seed, same numbers)"),
) -> None:
    """Paired bootstrap over the scored clips: each row's mIoU lead over the reference and share of it, with 95%
    intervals (is a difference more than another draw of test clips would give?)."""
    from pcas_cli.stages.compare import CompareConfig, run as compare_run

    compare_run(CompareConfig(reference=reference, others=tuple(others), resamples=resamples, seed=seed))


@app.command()
def export(
    predictions: Path = typer.Option(..., help="predictions artifact (e.g. data/runs/synth-avss/crf/test.h5)"),
    features: Path = typer.Option(..., help="the same split's features artifact (its frames)"),
    out: Path = typer.Option(..., help="folder to write: <clip_id>/masks/{t}.png, <clip_id>/overlays/{t}.png"),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="also write frames with the mask blended in"),
    alpha: float = typer.Option(0.5, help="opacity of the mask colours in the overlays"),
) -> None:
    """Predictions -> one PNG mask per frame (class-index palette PNG, or 0/255 for binary data) and overlays."""
    from pcas_cli.stages.export import ExportConfig, run as export_run

    export_run(ExportConfig(predictions=predictions, features=features, out=out, overlays=overlays, alpha=alpha))


@app.command()
def bench(
    out_dir: Path = typer.Option(Path("results"), help="where bench.json and bench.md go"),
    quick: bool = typer.Option(False, "--quick", help="tiny sizes (a smoke run; memory targets not checked)"),
    which: Optional[List[str]] = typer.Option(None, help="benchmarks to run (memory, extract, models, crf, metrics)"),
) -> None:
    """Speed and memory benchmarks (streaming memory, extract, models, CRF, metrics) -> bench.md / bench.json."""
    from pcas_cli.bench import BENCHMARKS, BenchConfig, run as bench_run

    path = bench_run(BenchConfig(out_dir=out_dir, quick=quick, which=tuple(which or BENCHMARKS)))
    if not json.loads(Path(path).read_text()).get("all_passed", True):
        raise PcasError(f"{path}: a benchmark target failed (see bench.md)")


@app.command()
def info(path: Path = typer.Argument(..., help="an artifact (.h5 / .pt) or a run folder")) -> None:
    """What each artifact is and how it was made (stage, config, seed, code version, inputs)."""
    from pcas_cli.inspect import run as info_run

    info_run(path)


def _record_timing(started: float) -> None:
    """Append this command's wall time and peak memory to $PCAS_TIMINGS (set by the Makefile) for `pcas report`."""
    import json
    import os
    import resource
    import time

    from pcas_cli.provenance import machine

    path = os.environ.get("PCAS_TIMINGS")
    if not path or len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        return
    # ru_maxrss is in KiB on Linux; children covers worker processes (CRF, data loaders, torchrun ranks).
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    record = {"command": sys.argv[1], "argv": sys.argv[2:], "seconds": round(time.time() - started, 2),
              "peak_rss_mb": round(peak / 1024, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": machine()}
    loop = sys.modules.get("pcas_cli.training.loop")  # None unless the command loaded the training loop
    if loop is not None and loop.RESUMED:
        record["resumed"] = list(loop.RESUMED)  # its time covers only the epochs this command trained
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main() -> None:
    """Console-script entry: user mistakes print one line and exit 2; no tracebacks."""
    import time

    started = time.time()
    try:
        app()
    except SystemExit as e:  # Click ends every command with sys.exit
        if e.code in (0, None):
            _record_timing(started)
        raise
    except PcasError as e:
        from pcas_cli.console import ERRORS

        ERRORS.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
