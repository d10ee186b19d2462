"""`pcas info`: describe artifacts (HDF5 or checkpoints) and whole run folders."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from pcas_cli.console import CONSOLE
from pcas_cli.errors import fail


def _describe(path: Path) -> dict:
    if path.suffix == ".h5":
        from pcas_cli.artifacts import describe

        return describe(path)
    if path.suffix == ".pt":
        from pcas_cli.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return {"path": str(path), "kind": "checkpoint", "artifact_id": ckpt.get("artifact_id", ""),
                "provenance": ckpt.get("provenance", {})}
    if path.suffix == ".json":
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(path, f"not a JSON metrics file ({e})") from None
        return {"path": str(path), "kind": "metrics", "artifact_id": "", "provenance": record}
    raise fail(path, "not an artifact (.h5, .pt or .json)")


def run(path: Path) -> None:
    path = Path(path)
    if not path.exists():
        raise fail(path, "no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".h5", ".pt") and ".last" not in p.name) \
        if path.is_dir() else [path]
    if path.is_dir():
        table = Table(title=f"run {path}")
        for col in ("artifact", "kind", "stage", "id", "seed", "code", "made from"):
            table.add_column(col)
        for p in files:
            d = _describe(p)
            prov = d.get("provenance", {})
            inputs = ", ".join(f"{k}@{str(v)[:8]}" for k, v in prov.get("inputs", {}).items())
            table.add_row(str(p.relative_to(path)), d["kind"], str(prov.get("stage", "")), str(d["artifact_id"])[:12],
                          str(prov.get("seed", "")), str(prov.get("code_version", "")), inputs)
        CONSOLE.print(table)
    else:
        CONSOLE.print_json(json.dumps(_describe(path), default=str))
