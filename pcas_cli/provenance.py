"""What made an artifact: stage, resolved config, seed, code version, library versions, input fingerprints."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

from pcas_cli import __version__
from pcas_cli.errors import PcasError


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>+g<git sha>[.dirty]` when run from a git checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "pcas_cli"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{__version__}+g{sha}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 over this package's Python sources (names and contents): equal exactly when the code is. Unlike
    code_version it ignores commits that leave the package alone and sees uncommitted edits."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    # pillow decodes and resizes frames, soundfile reads audio, pydensecrf2 is the dense CRF: each shapes results
    for name in ("torch", "timm", "torchaudio", "numpy", "h5py", "pillow", "soundfile", "pydensecrf2"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def machine() -> str:
    """'<CPU model>, <n> cores, <GPU or "no GPU">': where a command ran (timings log, report)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def make_provenance(stage: str, config: Mapping[str, Any], seed: int | None,
                    inputs: Mapping[str, str]) -> dict[str, Any]:
    """Provenance record stored in every artifact (HDF5 root attribute / checkpoint key).

    Args:
        inputs: input name (e.g. "features/train.h5") -> that input's fingerprint (its `artifact_id`).
    """
    return {
        "stage": stage,
        "config": dict(config),
        "seed": seed,
        "code_version": code_version(),
        "libraries": library_versions(),
        "threads": torch_threads(),  # CPU reductions can depend on it, so it belongs to "same seed, same numbers"
        "inputs": dict(inputs),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def check_inputs(artifact: Path | str, recorded: Mapping[str, str], current: Mapping[str, str]) -> None:
    """Refuse stale inputs: each input `artifact` was made from must still have the fingerprint recorded then."""
    for name, fp in current.items():
        if name in recorded and recorded[name] != fp:
            raise PcasError(
                f"{artifact}: stale input: it was made from {name} {recorded[name][:12]}, but that file is now "
                f"{fp[:12]}; rerun the stage that makes {artifact} (make does this for you)"
            )


def check_made_alike(artifact: Path | str, reference: Path | str, made: Mapping[str, Any],
                     reference_made: Mapping[str, Any], ignore: tuple[str, ...] = ("split", "device", "run")) -> None:
    """Refuse `artifact` built on choices taken from `reference` (thresholds, a CRF kernel chosen on val) unless both
    were made alike: the same stage and settings except `ignore`, and the same version of every input they share
    other than their own split's features (e.g. the same checkpoint)."""
    config, ref_config = made.get("config", {}), reference_made.get("config", {})
    differ = sorted(k for k in set(config) | set(ref_config) if k not in ignore and config.get(k) != ref_config.get(k))
    inputs, ref_inputs = made.get("inputs", {}), reference_made.get("inputs", {})
    differ += sorted(k for k in set(inputs) & set(ref_inputs)
                     if Path(k).parent.name != "features" and inputs[k] != ref_inputs[k])
    if made.get("stage") != reference_made.get("stage"):
        differ.insert(0, "stage")
    if differ:
        raise PcasError(f"{artifact}: made otherwise than {reference}, whose choices it uses (differing: "
                        f"{', '.join(differ)}); remake both with the same settings (make does this for you)")


def check_input_file(artifact: Path | str, recorded: Mapping[str, str], path: Path | str, fingerprint: str,
                     required: bool = False) -> None:
    """Refuse `artifact` when it was made from another version of the file at `path` (fingerprint `fingerprint`).

    Stages record file inputs by the path they were given (`features/val.h5`, `data/runs/x/features/val.h5`, an
    absolute path), so a recorded name is matched on its last two parts, folder and file (`features/val.h5`): a run
    folder copied or moved elsewhere still checks against its own inputs. With `required`, an artifact that records
    no such input is refused too (it cannot be shown to come from this file).
    """
    tail = Path(path).resolve().parts[-2:]
    names = [k for k in recorded if Path(k).parts[-2:] == tail]
    if not names and required:
        raise PcasError(f"{artifact}: records no {Path(*tail)} among its inputs, so it cannot be shown to be made "
                        f"from {path}; rerun the stage that makes {artifact}")
    check_inputs(artifact, recorded, {k: fingerprint for k in names})

