"""Frozen, typed stage configs loaded from `stages/<stage>.toml`, preset overlays and command-line overrides.

A stage config is a `@dataclass(frozen=True)` whose fields may be nested frozen dataclasses. Values come, in order of
precedence, from: command-line overrides > preset overlay (`stages/presets/<name>.toml`, section `[<stage>]`) >
the stage TOML > the dataclass defaults. Unknown keys are rejected with an error naming the file and key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from pcas_cli.errors import PcasError, fail

T = TypeVar("T")

CHECKOUT_STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"


def stages_dir() -> Path:
    """`stages/` of the working directory, else the pcas checkout's own: run from elsewhere, a stage still gets its
    project defaults (e.g. the upper bound's 40 epochs) rather than silently falling back to the code defaults."""
    here = Path("stages")
    return here if here.is_dir() or not CHECKOUT_STAGES_DIR.is_dir() else CHECKOUT_STAGES_DIR


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a TOML value to the annotated type (tuples from lists, ints to floats, nested dataclasses)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise PcasError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except PcasError as e:
                errors.append(str(e))
        raise PcasError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise PcasError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PcasError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise PcasError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PcasError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PcasError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PcasError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise PcasError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise PcasError(f"{where}: expected a path (a string), got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise PcasError(f"{where}: unknown key(s) {unknown}; known: {sorted(types_)}")
    # "stages/x.toml: fbank.num_mel_bins": the source, then the dotted key within it
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if ": " in where else f"{where}: {k}")
              for k, v in values.items()}
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
    if required:
        raise PcasError(f"{where}: missing required setting(s) {required}")
    try:
        return cls(**kwargs)
    except PcasError as e:  # a value the config's own checks refuse (__post_init__)
        raise PcasError(f"{where}: {e}") from None


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overlay.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise fail(path, "config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise fail(path, f"invalid TOML: {e}") from None


def _dotted_to_nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:  # an option the user did not give: keep the file's value
            continue
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def load_config(
    cls: type[T],
    stage: str,
    config_path: Path | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a stage's config.

    Args:
        cls: the stage's frozen config dataclass.
        stage: stage name as in `stages/<stage>.toml` and preset sections (e.g. "train-visual").
        config_path: TOML file; defaults to `stages/<stage>.toml` when it exists, else dataclass defaults only.
        preset: name of an overlay in `stages/presets/<preset>.toml` (its `[<stage>]` section), or a path to one.
        overrides: dotted keys (`"model.backbone"`) to values; `None` values are ignored.
    """
    values: dict[str, Any] = {}
    where = "defaults"
    stages = stages_dir()
    if config_path is None and (stages / f"{stage}.toml").exists():
        config_path = stages / f"{stage}.toml"
    if config_path is not None:
        values = _read_toml(Path(config_path))
        where = str(config_path)
    if preset:
        preset_path = Path(preset) if preset.endswith(".toml") else stages / "presets" / f"{preset}.toml"
        if not preset_path.exists():
            available = sorted(p.stem for p in (stages / "presets").glob("*.toml"))
            raise fail(preset_path, f"preset not found (available: {available})")
        values = _merge(values, _read_toml(preset_path).get(stage, {}))
        where = f"{where} + {preset_path}"
    given = _dotted_to_nested(overrides or {})
    if given:
        where = f"{where} + command line"
    return _build(cls, _merge(values, given), where)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (nested) config dataclass, for provenance records."""
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))

