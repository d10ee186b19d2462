"""Make's per-stage view of a data-set preset: one file per preset section, rewritten only when it changes.

`make` runs every stage of a run named <D>-<layout> with `--preset <D>` (stages/presets/<D>.toml). A preset holds
sections for many stages, so if the whole file were a prerequisite, editing the listener's section would retrain
everything from `extract` on. Instead each stage depends on `<out>/<D>/<stage>.json`, the canonical JSON of that
stage's section, which this module rewrites only when its content differs: its mtime moves only when that section
changes (the write-if-changed idiom; GNU make compares mtimes after a recipe runs).

Usage (from the Makefile): python -m pcas_cli.preset_sections PRESET.toml STAGE OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pcas_cli.config import _read_toml
from pcas_cli.errors import PcasError


def section_text(preset: Path, stage: str) -> str:
    """The canonical JSON of `[stage]` in `preset` ("{}" when the preset leaves that stage alone)."""
    return json.dumps(_read_toml(preset).get(stage, {}), sort_keys=True, indent=1) + "\n"


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` (atomically) unless it already holds exactly that; True when written."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m pcas_cli.preset_sections PRESET.toml STAGE OUT.json", file=sys.stderr)
        return 2
    preset, stage, out = Path(args[0]), args[1], Path(args[2])
    try:
        write_if_changed(out, section_text(preset, stage))
    except PcasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
