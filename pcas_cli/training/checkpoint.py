"""Checkpoint files: atomic writes, checked reads, and the weights fingerprint (`artifact_id`).

Two kinds share one format (a `torch.save`d dict, read back with `weights_only=True` so loading a file never runs
code from it):
- `artifact` (`<ckpt_dir>/<name>.pt`): a stage's output weights, with `artifact_id` (sha256 of the weights) and
  provenance. Downstream stages read it with `load_checkpoint(path, expect_stage=...)` and record its `artifact_id`.
- `resume` (`<ckpt_dir>/<name>.last.pt`): everything needed to continue a run bit-for-bit (model, optimiser, scaler,
  step, epoch, config, provenance, RNG states, history).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pcas_cli.errors import PcasError, fail

FORMAT = "pcas-checkpoint"
FORMAT_VERSION = 1
KINDS = ("artifact", "resume")


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in sorted name order (device independent)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Viewing as bytes works for every dtype, including bfloat16 which numpy cannot hold.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (what checkpoints store)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def jsonable(obj: Any) -> Any:
    """A plain-JSON copy (paths and other objects as strings, tuples as lists): what weights_only loading accepts."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def make_artifact(state_dict: Mapping[str, torch.Tensor], stage: str, provenance: Mapping[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """The payload of a stage's output weights file, fingerprinted by its weights."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "artifact", "stage": stage,
            "model": dict(state_dict), "artifact_id": weights_fingerprint(state_dict),
            "provenance": jsonable(provenance), **extra}


def save_checkpoint(path: Path | str, payload: Mapping[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a reader sees the old file or the complete new one, never half."""
    path = Path(path)
    if payload.get("format") != FORMAT or payload.get("kind") not in KINDS:
        raise ValueError(f"not a checkpoint payload (format={payload.get('format')!r}, kind={payload.get('kind')!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())  # the rename below must not publish data still in the page cache
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path | str, expect_stage: str | tuple[str, ...] | None = None, expect_kind: str | None = None,
                    verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, checking format, kind, stage and (for artifacts) the weights fingerprint.

    Args:
        path: the `.pt` file.
        expect_stage: refuse a file written by another stage (e.g. "train-visual" for `visual.pt`), or by none of
            a tuple of stages.
        expect_kind: "artifact" or "resume"; None accepts both.
        verify: recompute an artifact's fingerprint and refuse it when the weights do not match `artifact_id`.

    Raises:
        PcasError: naming the file, when it is missing, unreadable, not a pcas checkpoint or the wrong one.
    """
    path = Path(path)
    if not path.exists():
        leftover = path.with_name(path.name + ".tmp").exists()
        hint = " (an interrupted write left a .tmp file; rerun the stage)" if leftover else ""
        raise fail(path, f"checkpoint not found{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for truncated/garbage files
        raise fail(path, f"not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail(path, "not a pcas checkpoint (no 'format' marker); was it written by pcas?")
    if int(payload.get("format_version", -1)) != FORMAT_VERSION:
        raise fail(path, f"checkpoint format version {payload.get('format_version')} != {FORMAT_VERSION}; "
                         "rerun the stage that made it")
    kind = payload.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise fail(path, f"expected a {expect_kind} checkpoint, found a {kind} checkpoint")
    stages = (expect_stage,) if isinstance(expect_stage, str) else expect_stage
    if stages is not None and payload.get("stage") not in stages:
        wanted = " or ".join(repr(s) for s in stages)
        raise fail(path, f"expected weights made by stage {wanted}, but this file was made by "
                         f"{payload.get('stage')!r}")
    if verify and kind == "artifact" and weights_fingerprint(payload["model"]) != payload.get("artifact_id"):
        raise fail(path, "weights do not match the recorded artifact_id (file damaged or edited); rerun the stage")
    return payload


def check_same_run(path: Path | str, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to resume when anything that shapes the run differs; the message lists every differing key.

    Args:
        saved, current: flat or nested JSON-like dicts (config, provenance parts, world size) to compare.
    """
    diffs = _diff(saved, current, "")
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs[:6])
        more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise PcasError(f"{path}: cannot resume, the run's settings changed ({shown}{more}); resume with the "
                        "same settings, or start over without --resume")


def differing_keys(saved: Any, current: Any) -> list[str]:
    """The dotted keys whose values differ between two JSON-like records (e.g. "optim.lr")."""
    return [key for key, _, _ in _diff(saved, current, "")]


def _diff(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [(prefix, a, b)]


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (current) CUDA generator states, in weights_only-loadable types."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"python": random.getstate(),
            "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    """Inverse of `capture_rng`."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x: Any) -> Any:
    """random.setstate needs tuples; a round trip through some serialisers turns them into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
