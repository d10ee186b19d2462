"""`pcas baseline`: reference predictions that need no training.

- background: every pixel background (the floor every method must beat).
- visible: every VISIBLE object segmented with its true class, sounding or silent (generated data only: it reads the
  generator's object maps). It is what a perfect visual segmenter that ignores audio would produce, so the gap to
  the ground truth is exactly the silent distractors: the part only audio can resolve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from pcas_cli.artifacts import ArtifactReader
from pcas_cli.errors import PcasError
from pcas_cli.provenance import make_provenance
from pcas_cli.stages._common import feature_key, open_features, stage_config
from pcas_cli.stages._predict import prediction_classes, write_predictions


@dataclass(frozen=True)
class BaselineConfig:
    run: Path = Path("data/runs/synth-avss")  # run folder
    kind: Literal["background", "visible"] = "background"  # which baseline
    split: str = "test"  # split to predict


def rows(feats: ArtifactReader, kind: str) -> Iterator[dict[str, Any]]:
    t, h, w = feats.dims["T"], feats.dims["H"], feats.dims["W"]
    k = len(prediction_classes(feats)) + 1
    for i in range(len(feats)):
        masks = np.zeros((t, h, w), np.uint8)
        if kind == "visible":
            masks = feats.read("visible", i)
            if feats.task == "binary":
                masks = (masks > 0).astype(np.uint8)
        scores = (np.arange(k)[None, :, None, None] == masks[:, None]).astype(np.float16)  # one-hot (T, K, H, W)
        yield {"clip_id": feats.read("clip_id", i), "scores": scores, "masks": masks,
               "frame_classes": np.zeros((t, len(feats.classes)), np.float32)}


def run(cfg: BaselineConfig) -> Path:
    feats = open_features(cfg.run, cfg.split)
    if cfg.kind == "visible" and not feats.meta.get("has_visible"):
        raise PcasError(f"{feats.path}: has no visible-object maps (only generated data sets do)")
    prov = make_provenance("baseline", stage_config(cfg), None, {feature_key(cfg.split): feats.artifact_id})
    return write_predictions(Path(cfg.run) / "baselines" / cfg.kind / f"{cfg.split}.h5", feats, rows(feats, cfg.kind),
                             {"method": cfg.kind}, prov, f"{cfg.kind} {cfg.split}")
