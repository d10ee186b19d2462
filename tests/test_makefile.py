"""Make's dependency graph reruns exactly what a config change affects (stage TOMLs are prerequisites)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The preset-section recipes run python -m pcas_cli.preset_sections: use this interpreter (a copied tree has no .venv).
MAKE_VARS = (f"PY={sys.executable}",)


def _up_to_date_tree(tmp_path: Path, target: str, *flags: str) -> None:
    """A copy of the project's Makefile and stages/ in which every artifact of `target` is up to date."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    # `make -t` marks every artifact up to date without running anything (except the `+` preset-section recipes),
    # but does not create folders: create each folder it names, and go again.
    for _ in range(500):
        done = subprocess.run(["make", "-s", "-t", *MAKE_VARS, *flags, target], cwd=tmp_path, capture_output=True,
                              text=True)
        if done.returncode == 0:
            break
        missing = re.search(r"touch: open: (.+?): No such file", done.stderr)
        assert missing, done.stderr
        (tmp_path / missing.group(1)).parent.mkdir(parents=True)


def _dry_run(tmp_path: Path, target: str, *flags: str) -> str:
    """The pcas commands `make -n` would run (the preset-section recipes, marked `+`, do run)."""
    out = subprocess.run(["make", "-n", *MAKE_VARS, *flags, target], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout
    return "\n".join(line for line in out.splitlines() if "pcas " in line and " report " not in line)


def _commands_after_touching(tmp_path: Path, toml: str, target: str = "reproduce-ablations") -> str:
    _up_to_date_tree(tmp_path, target)
    return _dry_run(tmp_path, target, "-W", f"stages/{toml}")


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
    """stages/presets/avdigits.toml: every training / labelling stage of avdigits-* runs gets --preset avdigits; the
    synth runs neither get it nor rerun when it changes."""
    _up_to_date_tree(tmp_path, "bench-avdigits-seg")
    out = _dry_run(tmp_path, "bench-avdigits-seg", "-B")  # every command, as a fresh run would
    assert "pcas train-visual --run data/runs/avdigits-avss --preset avdigits" in out
    assert "pcas train-tvp --run data/runs/avdigits-avss --tvp --preset avdigits" in out
    assert "pcas refine --run data/runs/avdigits-avss --name refine-cmpc" in out
    stages = set()
    for line in out.splitlines():
        stage = line.split()[1]
        assert ("--preset avdigits" in line) == (stage not in ("eval", "crf", "baseline", "build-avdigits")), line
        stages.add(stage)
    from typer.testing import CliRunner

    from pcas_cli.cli import app

    assert {"extract", "train-visual", "train-tvp", "align", "refine", "pseudo-label", "diagnose", "train-supervised",
            "train-seg"} <= stages
    for stage in stages - {"eval", "crf", "baseline", "build-avdigits"}:  # each command that gets --preset takes it
        assert "--preset" in CliRunner().invoke(app, [stage, "--help"], terminal_width=200).output, stage
    (tmp_path / "synth").mkdir()
    _up_to_date_tree(tmp_path / "synth", "reproduce")
    _edit_align_section(tmp_path / "synth")
    assert _dry_run(tmp_path / "synth", "reproduce") == ""
    listed = _dry_run(tmp_path / "synth", "data/runs/synth-avss/ckpt/align.pt", "-B")
    assert "pcas align --run data/runs/synth-avss" in listed and "--preset" not in listed


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_demo_runs_every_table_2_3_stage_with_its_preset_and_its_data_follow_the_synth_section(tmp_path: Path) -> None:
    """`make demo`: the demo-avss run, from `pcas synth --preset demo` to every weakly supervised Table 2/3 score,
    every stage that takes a preset given --preset demo; editing the preset's [synth] section regenerates the data and
    reruns all."""
    _up_to_date_tree(tmp_path, "demo")
    every = _dry_run(tmp_path, "demo", "-B")
    assert "pcas synth --layout avss --root data/raw/demo-avss --preset demo" in every
    for stage in ("extract", "train-visual", "train-tvp", "align", "refine", "pseudo-label", "diagnose"):
        assert re.search(rf"pcas {stage} .*--run data/runs/demo-avss.* --preset demo", every), stage
    # one run; no Table 4 rows, no fully supervised bound
    assert "synth-" not in every and "refine-cmpc" not in every and "supervised" not in every
    for name in ("pcas", "pcas-crf", "cam", "cam-crf", "similarity", "visible", "oracle-listener"):
        assert f"--out data/runs/demo-avss/metrics/{name}.json" in every, name
    assert _dry_run(tmp_path, "demo") == ""
    preset = tmp_path / "stages" / "presets" / "demo.toml"
    edited = preset.read_text().replace("\nvideos = 96\n", "\nvideos = 95\n", 1)
    assert edited != preset.read_text(), "the test expects videos = 96 in the demo preset's [synth] section"
    preset.write_text(edited)
    after = _dry_run(tmp_path, "demo")
    assert "pcas synth --layout avss" in after and "pcas train-visual --run data/runs/demo-avss" in after


def _edit_align_section(root: Path) -> None:
    preset = root / "stages" / "presets" / "avdigits.toml"
    text = preset.read_text()
    edited = text.replace("\n[align]\n", "\n[align]\nresume = false\n", 1)  # a new key in [align] only
    assert edited != text, "the test expects an [align] section in the avdigits preset"
    preset.write_text(edited)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_editing_one_preset_section_reruns_that_stage_onward_only(tmp_path: Path) -> None:
    _up_to_date_tree(tmp_path, "bench-avdigits")
    preset = tmp_path / "stages" / "presets" / "avdigits.toml"
    preset.write_text(preset.read_text() + "\n# a comment changes no section\n")
    assert _dry_run(tmp_path, "bench-avdigits") == ""
    _edit_align_section(tmp_path)
    out = _dry_run(tmp_path, "bench-avdigits")
    for downstream in ("pcas align --run data/runs/avdigits-avss --preset avdigits",
                       "pcas refine --run data/runs/avdigits-avss --preset avdigits",
                       "pcas pseudo-label --run data/runs/avdigits-avss --split val --preset avdigits",
                       "--out baselines/similarity", "pcas crf", "pcas eval"):
        assert downstream in out
    for upstream in ("pcas build-avdigits", "pcas extract", "pcas train-visual", "pcas train-tvp",
                     "pcas train-supervised", "--out baselines/cam", "out=listeners"):
        assert upstream not in out


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_retraining_the_looking_encoder_reruns_align_even_without_tvp_listening(tmp_path: Path) -> None:
    """align starts from visual.pt: on AV-Digits, whose masks hear only the audio-only listener (which never reads
    visual.pt), retraining the Looking encoder must still rerun align and everything after it, and not the listener."""
    _up_to_date_tree(tmp_path, "bench-avdigits")
    out = _dry_run(tmp_path, "bench-avdigits", "-W", "stages/train-visual.toml")
    for downstream in ("pcas train-visual --run data/runs/avdigits-avss",
                       "pcas align --run data/runs/avdigits-avss --preset avdigits",
                       "pcas align --run data/runs/avdigits-avss --name align-nocmc",
                       "pcas refine --run data/runs/avdigits-avss --preset avdigits",
                       "pcas pseudo-label --run data/runs/avdigits-avss --split val --preset avdigits"):
        assert downstream in out
    assert "--no-tvp" not in out and "pcas train-supervised" not in out


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_extra_table4_seeds_train_every_row_again_with_their_seed(tmp_path: Path) -> None:
    _up_to_date_tree(tmp_path, "reproduce-ablations")
    out = _dry_run(tmp_path, "reproduce-ablations", "TABLE4_SEEDS=0 1")
    # seed 0's rows are up to date; seed 1 trains both align checkpoints and every refine variant with --seed 1
    assert "--name align-s1 --seed 1" in out and "--name align-nocmc-s1 --no-cmc --seed 1" in out
    assert "--name refine-s1 --init align-s1 --seed 1" in out
    assert "--name refine-cmpc-cmcc-s1 --init align-nocmc-s1 --no-cmc --cmpc --cmcc --seed 1" in out
    evals = re.findall(r"--name \"([\w-]+)\"", out)
    assert sorted(evals) == sorted(f"{a}-s1" for a in ("none", "cmc", "cmpc", "cmcc", "cmpc-cmcc", "cmc-cmpc",
                                                        "cmc-cmcc", "all"))
    assert "--seed 0" not in out and "plain-s1" not in out


LISTENING_STAGES = ("align", "refine", "pseudo-label", "diagnose")


def _make_listeners(run: str) -> list[str]:
    """The listener checkpoints Make lists as prerequisites of run `run`'s align / refine / pseudo-label / diagnose."""
    out = subprocess.run(["make", "-s", *MAKE_VARS, "--eval", f"print-listeners: ; @echo $(call listeners,{run})",
                          "print-listeners"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return sorted(Path(p).stem for p in out.split())


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
@pytest.mark.parametrize("preset", [None, *sorted(p.stem for p in (ROOT / "stages" / "presets").glob("*.toml"))])
def test_make_lists_the_listeners_each_preset_hears_with(preset: str | None) -> None:
    """Make's listener prerequisites (LISTENERS, LISTENERS_<preset>) are what the stages' configs actually load."""
    from pcas_cli.config import load_config
    from pcas_cli.stages.align import AlignConfig
    from pcas_cli.stages.diagnose import DiagnoseConfig
    from pcas_cli.stages.pseudo_label import PseudoLabelConfig
    from pcas_cli.stages.refine import RefineConfig

    classes = dict(zip(LISTENING_STAGES, (AlignConfig, RefineConfig, PseudoLabelConfig, DiagnoseConfig)))
    for stage, cls in classes.items():
        cfg = load_config(cls, stage, preset=preset)
        heard = sorted({name for name in (cfg.listener, cfg.co_listener) if name})
        assert heard == _make_listeners(f"{preset or 'synth'}-avss"), (preset, stage)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_retraining_a_listener_the_masks_do_not_hear_with_reruns_nothing_downstream(tmp_path: Path) -> None:
    """avdigits runs hear with ast.pt alone: a new tvp.pt reruns Table 3's prompt check only; a new ast.pt reruns
    align on."""
    _up_to_date_tree(tmp_path, "bench-avdigits")
    out = _dry_run(tmp_path, "bench-avdigits", "-W", "data/runs/avdigits-avss/ckpt/tvp.pt").splitlines()
    assert len(out) == 1 and "pcas diagnose --run data/runs/avdigits-avss" in out[0] and "prompt_check=true" in out[0]
    out = _dry_run(tmp_path, "bench-avdigits", "-W", "data/runs/avdigits-avss/ckpt/ast.pt")
    assert "pcas align --run data/runs/avdigits-avss --preset avdigits" in out and "out=listeners" in out
    # The synthetic runs hear with TVP confirmed by the audio-only listener: a new tvp.pt reruns their align.
    (tmp_path / "synth").mkdir()
    _up_to_date_tree(tmp_path / "synth", "reproduce")
    assert "pcas align --run data/runs/synth-avss" in _dry_run(tmp_path / "synth", "reproduce", "-W",
                                                                  "data/runs/synth-avss/ckpt/tvp.pt")


def _report_line(tmp_path: Path, target: str, *flags: str) -> str:
    """The `pcas report` command `make target` runs (every pcas command echoed, not run)."""
    out = subprocess.run(["make", *MAKE_VARS, "PCAS=echo pcas", *flags, target], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("pcas report")]
    return line


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_the_report_shows_table4_rows_only_while_make_would_not_retrain_them(tmp_path: Path) -> None:
    _up_to_date_tree(tmp_path, "reproduce-ablations", "TABLE4_SEEDS=0 1")
    assert _report_line(tmp_path, "reproduce").endswith("--table4-seeds 0 1")  # seed 1's rows are on disk, current
    assert _report_line(tmp_path, "reproduce-ablations").endswith("--table4-seeds 0 1")
    # seed 2 was never trained: asking for it does not vouch for it (reproduce-ablations would train it)
    assert _report_line(tmp_path, "reproduce", "TABLE4_SEEDS=0 2").endswith("--table4-seeds 0 1")
    (tmp_path / "data/runs/synth-avss/ckpt/align-nocmc-s1.pt").touch()  # seed 1's rows without CMC are now stale
    assert _report_line(tmp_path, "reproduce").endswith("--table4-seeds 0")
    (tmp_path / "stages" / "refine.toml").touch()  # every Table 4 row is now stale; reproduce retrains refine only
    assert _report_line(tmp_path, "reproduce").endswith("--table4-seeds ")


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_resumes_interrupted_training_unless_told_not_to() -> None:
    """make exports PCAS_RESUME=auto to every pcas command (training continues where that is exact); a caller's
    PCAS_RESUME wins."""
    def seen(env: dict[str, str]) -> str:
        return subprocess.run(["make", "-s", *MAKE_VARS, "--eval", "print-resume: ; @echo $$PCAS_RESUME",
                               "print-resume"], cwd=ROOT, check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "PCAS_RESUME"}
    assert seen(env) == "auto"
    assert seen({**env, "PCAS_RESUME": "false"}) == "false"
