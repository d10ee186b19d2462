"""Writing a predictions artifact for one split, shared by every stage that predicts masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pcas_cli.artifacts import ArtifactReader, ArtifactWriter
from pcas_cli.console import CONSOLE, progress


def prediction_classes(features: ArtifactReader) -> list[str]:
    """Prediction class list: the features' classes (semantic) or ["sounding"] (binary)."""
    return list(features.classes) if features.task == "semantic" else ["sounding"]


def write_predictions(out: Path, features: ArtifactReader, rows: Iterable[dict[str, Any]], meta: dict[str, Any],
                      provenance: dict[str, Any], desc: str) -> Path:
    """Stream `rows` (one dict per clip, in the features' order) into `out`, atomically, with a progress bar."""
    classes = prediction_classes(features)
    dims = {"T": features.dims["T"], "K": len(classes) + 1, "H": features.dims["H"], "W": features.dims["W"],
            "A": len(features.classes)}
    full_meta = {"classes": classes, "audio_classes": list(features.classes), "task": features.task,
                 "split": features.meta.get("split", ""), **meta}
    with ArtifactWriter(out, "predictions", dims, full_meta, provenance) as writer, progress() as bar:
        task = bar.add_task(desc, total=len(features), info="")
        for row in rows:
            writer.append(**row)
            bar.advance(task)
    CONSOLE.print(f"[green]wrote[/green] {out}")
    return out
