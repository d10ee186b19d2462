"""The `pcas` command line: a thin Typer layer. Each command resolves a frozen config and calls one `run(cfg)`.

Option values left unset come from the stage's TOML (`stages/<stage>.toml`, or `--config FILE`), then a preset
overlay (`--preset NAME` = `stages/presets/NAME.toml`), then `--set key=value` for any config field.
No torch code lives here; stage modules are imported lazily so `pcas --help` is fast.
"""

from __future__ import annotations

import dataclasses
import importlib
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

ConfigOpt = typer.Option(None, "--config", help="stage TOML file [default: stages/<stage>.toml if present]")
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
           **options: Any) -> Any:
    """Resolve the stage config (options named a__b mean nested field a.b) and call the stage's run(cfg)."""
    from pcas_cli.config import load_config

    mod = importlib.import_module(f"pcas_cli.{module}")
    overrides = {k.replace("__", "."): v for k, v in options.items()}
    overrides.update(_parse_sets(sets))
    cfg = load_config(getattr(mod, cls_name), stage, config, preset, overrides)
    return mod.run(cfg)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pcas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Run `pcas COMMAND --help` for a command's options. `make reproduce` runs the whole pipeline."""


@app.command()
def extract(
    layout: Optional[str] = typer.Option(None, help="dataset layout: avss | s4 | ms3 [config: avss]"),
    root: Optional[Path] = typer.Option(None, help="dataset root [config: data/raw/synth-avss]"),
    run: Optional[Path] = typer.Option(None, help="run folder; writes features/{split}.h5 [config: data/runs/synth-avss]"),
    image_size: Optional[int] = typer.Option(None, help="frame size in pixels (square) [config: 128]"),
    limit: Optional[int] = typer.Option(None, help="at most this many clips per split, 0 = all [config: 0]"),
    labels_csv: Optional[str] = typer.Option(None, help="MS3 only: AVSS metadata.csv with video labels"),
    config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt, set_: Optional[List[str]] = SetOpt,
) -> None:
    """Features: resized frames, per-second AST fbank, video labels, masks (for scoring) -> HDF5 per split."""
    _stage("stages.extract", "ExtractConfig", "extract", config, preset, set_, layout=layout, root=root, run=run,
           image_size=image_size, limit=limit, labels_csv=labels_csv)


@app.command()
def info(path: Path = typer.Argument(..., help="an artifact (.h5 / .pt) or a run folder")) -> None:
    """What each artifact is and how it was made (stage, config, seed, code version, inputs)."""
    from pcas_cli.inspect import run as info_run

    info_run(path)


def main() -> None:
    """Console-script entry: user mistakes print one line and exit 2; no tracebacks."""
    try:
        app()
    except PcasError as e:
        from pcas_cli.console import CONSOLE

        CONSOLE.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
