"""Make's dependency graph reruns exactly what a config change affects (stage TOMLs are prerequisites)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _commands_after_touching(tmp_path: Path, toml: str, target: str = "reproduce-ablations") -> str:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    # Mark every artifact up to date without running anything (`make -t`), then ask what would rerun if `toml`
    # changed. `make -t` touches files but does not create folders: create each folder it names, and go again.
    for _ in range(500):
        done = subprocess.run(["make", "-s", "-t", target], cwd=tmp_path, capture_output=True, text=True)
        if done.returncode == 0:
            break
        missing = re.search(r"touch: open: (.+?): No such file", done.stderr)
        assert missing, done.stderr
        (tmp_path / missing.group(1)).parent.mkdir(parents=True)
    out = subprocess.run(["make", "-n", "-W", f"stages/{toml}", target], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if "pcas " in line and " report " not in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_touching_a_stage_config_reruns_it_and_its_descendants_only(tmp_path: Path) -> None:
    out = _commands_after_touching(tmp_path, "align.toml")
    for downstream in ("pcas align", "pcas refine", "pcas pseudo-label", "pcas crf", "pcas eval"):
        assert downstream in out
    for upstream in ("pcas synth", "pcas extract", "pcas train-visual", "pcas train-tvp", "pcas train-supervised",
                     "pcas baseline"):
        assert upstream not in out
    # The visual-only CAM baseline does not depend on align; the similarity baseline does.
    assert "--out baselines/cam" not in out and "--out baselines/similarity" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_touching_eval_config_reruns_only_scoring(tmp_path: Path) -> None:
    out = _commands_after_touching(tmp_path, "eval.toml")
    commands = {line.split()[1] for line in out.splitlines()}
    assert commands == {"eval"}


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_a_data_set_preset_applies_to_its_runs_only(tmp_path: Path) -> None:
    """stages/presets/avdigits.toml: every training / labelling stage of avdigits-* runs gets --preset avdigits and
    reruns when the preset changes; the synth runs neither get it nor rerun."""
    out = _commands_after_touching(tmp_path, "presets/avdigits.toml", target="bench-avdigits")
    assert "pcas train-visual --run data/runs/avdigits-avss --preset avdigits" in out
    assert "pcas train-tvp --run data/runs/avdigits-avss --tvp --preset avdigits" in out
    assert "pcas refine --run data/runs/avdigits-avss --name refine-cmpc" in out
    stages = set()
    for line in out.splitlines():
        stage = line.split()[1]
        assert ("--preset avdigits" in line) == (stage not in ("eval", "crf", "baseline")), line
        stages.add(stage)
    from typer.testing import CliRunner

    from pcas_cli.cli import app

    assert {"extract", "train-visual", "train-tvp", "align", "refine", "pseudo-label", "diagnose", "train-supervised",
            "train-seg"} <= stages
    for stage in stages - {"eval", "crf", "baseline"}:  # each command that gets --preset accepts it
        assert "--preset" in CliRunner().invoke(app, [stage, "--help"], terminal_width=200).output, stage
    (tmp_path / "synth").mkdir()
    synth = _commands_after_touching(tmp_path / "synth", "presets/avdigits.toml", target="reproduce")
    assert synth == ""
    listed = subprocess.run(["make", "-n", "-B", "data/runs/synth-avss/ckpt/align.pt"], cwd=tmp_path / "synth",
                            check=True, capture_output=True, text=True).stdout
    assert "pcas align --run data/runs/synth-avss" in listed and "--preset" not in listed
