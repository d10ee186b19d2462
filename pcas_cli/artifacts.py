"""The HDF5 artifact schema: names, per-clip shapes, dtypes and attributes, with checked, streaming, atomic I/O.

No other module opens HDF5 files. An artifact is one file holding N clips; every dataset's first axis is the clip
index and is chunked one clip per chunk, so readers touch only the clips they need and memory does not grow with N.

Kinds:
- `features` (written by `pcas extract`): frames, per-second fbank, video labels, masks and validity flags.
- `predictions` (written by `pcas pseudo-label`, `pcas crf`, baselines and segmentation models): soft per-class
  scores and hard masks per frame. dims: K = score channels = 1 + len(meta.classes), where meta.classes is the
  features' class list for semantic tasks and `["sounding"]` for binary ones (channel 1 = foreground probability);
  A = len(meta.audio_classes) (the features' class list), for the per-frame sounding-class probabilities.

Root attributes on every artifact: `kind`, `schema_version`, `artifact_id` (sha256 over everything written: the
fingerprint downstream stages record), `provenance` (JSON), `dims` (JSON: the symbolic sizes T, H, W, ...),
`meta` (JSON: kind-specific metadata, e.g. classes, task, dataset, split, fbank parameters).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from pcas_cli.errors import PcasError, fail

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Field:
    """One per-clip dataset: dtype and per-clip shape written with symbols resolved from the artifact's dims."""

    dtype: str  # numpy dtype name, or "str" for variable-length UTF-8 strings
    shape: tuple[str | int, ...]  # per-clip shape, e.g. ("T", "H", "W", 3)
    compress: bool = True


FEATURES: dict[str, Field] = {
    "clip_id": Field("str", ()),
    "subset": Field("str", ()),
    "frames": Field("uint8", ("T", "H", "W", 3)),  # RGB at the configured resolution; padded frames are zero
    "fbank": Field("float16", ("T", "F", "M")),  # per-second AST-normalised log-mel fbank, F frames x M mel bins
    "labels": Field("uint8", ("C",)),  # video-level multi-hot over meta.classes (background excluded)
    "masks": Field("uint8", ("T", "H", "W")),  # binary {0,1} or class index (0 = background); scoring only
    "mask_valid": Field("bool", ("T",)),  # frame t has a ground-truth mask
    "frame_valid": Field("bool", ("T",)),  # frame t is a real frame (False = padding to T)
    "visible": Field("uint8", ("T", "H", "W")),  # every visible object's class index; all 0 when meta.has_visible
    #                                            is false (real data). Reference baseline only, never for training.
}

PREDICTIONS: dict[str, Field] = {
    "clip_id": Field("str", ()),
    "scores": Field("float16", ("T", "K", "H", "W")),  # soft scores, channel 0 = background, k = classes[k-1]
    "masks": Field("uint8", ("T", "H", "W")),  # hard prediction: class index (binary: 0/1)
    "frame_classes": Field("float32", ("T", "A")),  # per-frame sounding-class probabilities (over meta.audio_classes)
}

SCHEMAS: dict[str, dict[str, Field]] = {"features": FEATURES, "predictions": PREDICTIONS}


def _resolve(shape: tuple[str | int, ...], dims: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(dims[s]) if isinstance(s, str) else int(s) for s in shape)


def _h5dtype(dtype: str) -> Any:
    return h5py.string_dtype("utf-8") if dtype == "str" else np.dtype(dtype)


def tmp_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


class ArtifactWriter:
    """Streams clips into a new artifact; the file appears at `path` only when the writer closes cleanly.

    Usage:
        with ArtifactWriter(path, "features", dims={...}, meta={...}, provenance={...}) as w:
            for clip in clips:
                w.append(clip_id=..., frames=..., ...)

    With `resume=True`, a leftover `<path>.tmp` from an interrupted run with the same provenance is reopened and
    `w.start` tells how many clips it already holds (the caller skips those).
    """

    def __init__(self, path: Path | str, kind: str, dims: Mapping[str, int], meta: Mapping[str, Any],
                 provenance: Mapping[str, Any], resume: bool = False) -> None:
        if kind not in SCHEMAS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self.dims = {k: int(v) for k, v in dims.items()}
        self.tmp = tmp_path_for(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prov_json = json.dumps(provenance, sort_keys=True, default=str)
        meta_json = json.dumps(meta, sort_keys=True, default=str)
        self.start = 0
        if resume and self.tmp.exists():
            try:
                f = h5py.File(self.tmp, "a")
                same = f.attrs.get("provenance") == prov_json and f.attrs.get("meta") == meta_json
                n = int(f.attrs.get("n_complete", 0))
            except OSError:
                same, n = False, 0
            if same:
                self.file = f
                for name in self.schema:
                    self.file[name].resize(n, axis=0)
                self.start = n
                self._hash = hashlib.sha256(self.file.attrs["partial_hash_seed"].encode())
                self._rehash_existing(n)
                return
            try:
                f.close()
            except Exception:  # noqa: BLE001 - a broken leftover is simply replaced
                pass
        self.tmp.unlink(missing_ok=True)
        self.file = h5py.File(self.tmp, "w")
        try:
            self._create(prov_json, meta_json)
        except BaseException:
            self.abort()  # nothing half-made is left behind, not even the .tmp
            raise

    def _create(self, prov_json: str, meta_json: str) -> None:
        """Write the header attributes and create the empty, growable datasets of a new artifact."""
        kind = self.kind
        self.file.attrs["kind"] = kind
        self.file.attrs["schema_version"] = SCHEMA_VERSION
        self.file.attrs["provenance"] = prov_json
        self.file.attrs["meta"] = meta_json
        self.file.attrs["dims"] = json.dumps(self.dims, sort_keys=True)
        self.file.attrs["n_complete"] = 0
        seed = kind + prov_json + meta_json + self.file.attrs["dims"]
        self.file.attrs["partial_hash_seed"] = seed
        self._hash = hashlib.sha256(seed.encode())
        for name, field in self.schema.items():
            shape = _resolve(field.shape, self.dims)
            kwargs: dict[str, Any] = {}
            if field.compress and shape:
                kwargs = {"compression": "lzf", "shuffle": True}
            self.file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape),
                                     dtype=_h5dtype(field.dtype), **kwargs)

    def _rehash_existing(self, n: int) -> None:
        for i in range(n):
            for name in self.schema:
                self._update_hash(self.file[name][i])

    def _update_hash(self, value: Any) -> None:
        if isinstance(value, (bytes, str)):
            self._hash.update(value.encode() if isinstance(value, str) else value)
        else:
            self._hash.update(np.ascontiguousarray(value).tobytes())

    def __len__(self) -> int:
        return int(self.file["clip_id"].shape[0])

    def append(self, **arrays: Any) -> None:
        """Append one clip. Every schema field must be given with exactly its per-clip shape and a castable dtype."""
        missing = set(self.schema) - set(arrays)
        extra = set(arrays) - set(self.schema)
        if missing or extra:
            raise ValueError(f"{self.kind} clip: missing {sorted(missing)}, unexpected {sorted(extra)}")
        n = len(self)
        checked = {}
        for name, field in self.schema.items():
            value = arrays[name]
            if field.dtype == "str":
                checked[name] = str(value)
                continue
            value = np.asarray(value)
            shape = _resolve(field.shape, self.dims)
            if value.shape != shape:
                raise ValueError(f"{self.kind}.{name}: per-clip shape {value.shape} != schema {shape}")
            checked[name] = value.astype(field.dtype, copy=False)
        for name, value in checked.items():
            ds = self.file[name]
            ds.resize(n + 1, axis=0)
            ds[n] = value
            self._update_hash(value)
        # Marks the clip complete only after every field is written, so a resumed run never sees half a clip.
        self.file.attrs["n_complete"] = n + 1

    def close(self) -> Path:
        self.file.attrs["artifact_id"] = self._hash.hexdigest()
        self.file.attrs["n_clips"] = len(self)
        del self.file.attrs["partial_hash_seed"]
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self, keep_partial: bool = False) -> None:
        try:
            self.file.flush()
            self.file.close()
        finally:
            if not keep_partial:
                self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            # Interrupted: keep the partial file only where resuming is possible (KeyboardInterrupt/kill).
            self.abort(keep_partial=exc_type is KeyboardInterrupt)


class ArtifactReader:
    """Checked, lazy reader. The HDF5 file opens on first access in each process (safe with DataLoader workers)."""

    def __init__(self, path: Path | str, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        if not self.path.exists():
            hint = " (an interrupted run left a .tmp file; rerun the stage)" if tmp_path_for(self.path).exists() else ""
            raise fail(self.path, f"artifact not found{hint}")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                shapes = {name: f[name].shape for name in f.keys()}
        except OSError as e:
            raise fail(self.path, f"not a readable HDF5 artifact ({e})") from None
        if attrs.get("kind") != kind:
            raise fail(self.path, f"expected a {kind} artifact, found kind={attrs.get('kind')!r}")
        if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise fail(self.path, f"schema version {attrs.get('schema_version')} != {SCHEMA_VERSION}; re-create it")
        if "artifact_id" not in attrs:
            raise fail(self.path, "incomplete artifact (no artifact_id); re-create it")
        self.artifact_id: str = str(attrs["artifact_id"])
        self.provenance: dict[str, Any] = json.loads(attrs["provenance"])
        self.meta: dict[str, Any] = json.loads(attrs["meta"])
        self.dims: dict[str, int] = json.loads(attrs["dims"])
        self.n = int(attrs["n_clips"])
        for name, field in SCHEMAS[kind].items():
            expected = (self.n, *_resolve(field.shape, self.dims))
            if shapes.get(name) != expected:
                raise fail(self.path, f"dataset {name!r} has shape {shapes.get(name)}, schema says {expected}")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    def read(self, name: str, i: int | slice) -> Any:
        try:
            value = self.file[name][i]
        except OSError as e:  # a damaged chunk (a disk error, a file cut short by a copy)
            raise fail(self.path, f"cannot read {name!r} at {i}: {e}; the file is damaged, re-create it") from None
        if SCHEMAS[self.kind][name].dtype == "str":
            if isinstance(value, np.ndarray):
                return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
            return value.decode() if isinstance(value, bytes) else str(value)
        return value

    def clip(self, i: int, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """All (or the named) fields of clip i."""
        return {name: self.read(name, i) for name in (names or tuple(SCHEMAS[self.kind]))}

    def clip_ids(self) -> list[str]:
        return self.read("clip_id", slice(None))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ArtifactReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Convenience accessors for metadata every consumer needs.
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])


def read_features(path: Path | str) -> ArtifactReader:
    return ArtifactReader(path, "features")


def read_predictions(path: Path | str) -> ArtifactReader:
    return ArtifactReader(path, "predictions")


def require_masks(features: ArtifactReader, why: str) -> None:
    """Refuse a features split extracted without ground truth (`pcas extract --test-without-masks`, meta "unscored")
    where masks are needed: scoring, or a diagnostic that reads them."""
    if features.meta.get("unscored"):
        raise fail(features.path, f"extracted with --test-without-masks: its frames have no ground-truth masks, so "
                                  f"{why}")


def describe(path: Path | str) -> dict[str, Any]:
    """Kind, size, dims, meta and provenance of any artifact (for `pcas info`)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
    except OSError as e:
        raise fail(path, f"not a readable HDF5 artifact ({e})") from None
    if kind not in SCHEMAS:
        raise fail(path, f"not a pcas artifact (kind {kind!r}; expected one of {sorted(SCHEMAS)})")
    r = ArtifactReader(path, str(kind))
    return {"path": str(path), "kind": kind, "clips": r.n, "artifact_id": r.artifact_id, "dims": r.dims,
            "meta": r.meta, "provenance": r.provenance}
