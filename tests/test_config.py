from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcas_cli.config import load_config, to_dict
from pcas_cli.errors import PcasError


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str = "a"
    steps: int = 3
    path: Path = Path("x")
    inner: Inner = field(default_factory=Inner)


def test_defaults_when_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(Outer, "outer") == Outer()


def test_toml_preset_and_overrides_precedence(tmp_path):
    cfg_file = tmp_path / "outer.toml"
    cfg_file.write_text('name = "file"\nsteps = 5\n[inner]\nlr = 1\nsizes = [3, 4, 5]\n')
    preset = tmp_path / "p.toml"
    preset.write_text('[outer]\nsteps = 7\n[other]\nsteps = 99\n')
    cfg = load_config(Outer, "outer", cfg_file, str(preset), {"inner.lr": 0.5, "name": None})
    assert cfg.name == "file"  # None override = not given
    assert cfg.steps == 7  # preset beats file
    assert cfg.inner.lr == 0.5 and isinstance(cfg.inner.lr, float)  # override beats all; int coerced to float
    assert cfg.inner.sizes == (3, 4, 5)
    assert to_dict(cfg)["inner"]["sizes"] == [3, 4, 5]


def test_unknown_key_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "outer.toml"
    cfg_file.write_text("stepz = 5\n")
    with pytest.raises(PcasError, match=r"outer\.toml.*stepz"):
        load_config(Outer, "outer", cfg_file)


def test_type_errors_are_user_errors(tmp_path):
    cfg_file = tmp_path / "outer.toml"
    cfg_file.write_text('steps = "many"\n')
    with pytest.raises(PcasError, match="steps: expected an integer"):
        load_config(Outer, "outer", cfg_file)
    cfg_file.write_text("steps = [\n")
    with pytest.raises(PcasError, match="invalid TOML"):
        load_config(Outer, "outer", cfg_file)


@dataclass(frozen=True)
class Checked:
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise PcasError(f"size must be at least 1, got {self.size}")


def test_errors_name_the_source_and_the_dotted_key(tmp_path):
    cfg_file = tmp_path / "outer.toml"
    cfg_file.write_text('[inner]\nlr = "fast"\n')
    with pytest.raises(PcasError, match=r"^.*outer\.toml: inner\.lr: expected a number, got 'fast'$"):
        load_config(Outer, "outer", cfg_file)
    cfg_file.write_text("steps = 2\n")
    with pytest.raises(PcasError, match=r"outer\.toml \+ command line: unknown key\(s\) \['stepz'\]"):
        load_config(Outer, "outer", cfg_file, overrides={"stepz": 1})
    with pytest.raises(PcasError, match=r"command line: path: expected a path \(a string\), got 3$"):
        load_config(Outer, "outer", cfg_file, overrides={"path": 3})
    # a value the config's own checks refuse is named with where it came from
    with pytest.raises(PcasError, match=r"^defaults \+ command line: size must be at least 1, got 0$"):
        load_config(Checked, "checked", overrides={"size": 0})


def test_stage_defaults_come_from_the_checkout_when_run_elsewhere(tmp_path, monkeypatch):
    """Outside the project folder a stage still reads the project's stages/<stage>.toml, not the code defaults."""
    from pcas_cli.stages.train_supervised import TrainSupervisedConfig

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    here = load_config(TrainSupervisedConfig, "train-supervised")
    assert here != TrainSupervisedConfig()  # the shipped TOML differs from the code defaults (epochs)
    monkeypatch.chdir(tmp_path)
    assert load_config(TrainSupervisedConfig, "train-supervised") == here


def test_every_stage_toml_loads():
    """The shipped stages/*.toml files are valid for their stage configs (and so are the presets' sections)."""
    import importlib

    from pcas_cli.cli import STAGE_CONFIGS

    root = Path(__file__).resolve().parent.parent / "stages"
    for stage, (module, cls_name) in STAGE_CONFIGS.items():
        cls = getattr(importlib.import_module(f"pcas_cli.{module}"), cls_name)
        path = root / f"{stage}.toml"
        assert path.exists(), f"missing {path}"
        load_config(cls, stage, path)
        for preset in sorted((root / "presets").glob("*.toml")):
            load_config(cls, stage, path, str(preset))
