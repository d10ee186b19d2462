"""`pcas train-seg`: the final segmentation network trained on PCAS pseudo-labels (paper §3; as in ToCo and WS-AVS).

The weakly supervised pipeline ends with masks made from CAMs. ToCo and WS-AVS then train an ordinary segmentation
network on the refined pseudo-labels of the train split: it learns from many frames at once, which smooths out the
per-frame mistakes of the CAMs, and it predicts at test time without the multi-scale CAM machinery. This stage is
that network, with exactly the recipe of the fully supervised upper bound (`pcas train-supervised`: same backbone,
FPN decoder, audio gate, schedule), so the two rows differ only in their labels:

- pixel targets: the train split's pseudo-label masks (by default the dense-CRF output, crf/train.h5, made by
  `pcas pseudo-label --split train`, which may intersect the listener's classes with the video labels, then
  `pcas crf`). Every valid frame has one, including frames with no ground-truth mask (e.g. S4 train frames 2-5);
- audio-branch targets: the classes present in each frame's pseudo-label (so: the listener's sounding classes that
  kept some pixels).

No ground-truth train mask is read (FrameDataset(masks_from=...) never opens them). As everywhere in the pipeline,
val's masks choose a setting (here: the epoch) and test's masks are only used by `pcas eval`.
Writes ckpt/seg.pt and seg/{val,test}.h5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pcas_cli.artifacts import ArtifactReader, read_predictions
from pcas_cli.errors import fail
from pcas_cli.provenance import check_input_file
from pcas_cli.stages._common import open_features
from pcas_cli.stages.train_supervised import TrainSupervisedConfig, fit_and_predict


@dataclass(frozen=True)
class TrainSegConfig(TrainSupervisedConfig):
    # Every field of TrainSupervisedConfig (model, decoder, audio branch, optim, augment, device, resume), plus:
    labels: str = "crf"  # learn from <run>/<labels>/train.h5 (crf: pseudo-labels after the dense CRF; pseudo: before)
    out: str = "seg"  # prediction folder under the run


def check_labels(cfg: TrainSegConfig) -> ArtifactReader:
    """The pseudo-label artifact of the train split, refused when missing or made from other train features."""
    path = Path(cfg.run) / cfg.labels / "train.h5"
    if not path.exists():
        raise fail(path, f"not found; make it with `pcas pseudo-label --run {cfg.run} --split train` and then "
                         f"`pcas crf` on it (or `make {cfg.run}/seg/test.h5`)")
    train = open_features(cfg.run, "train")
    labels = read_predictions(path)
    if labels.meta.get("split") not in ("train", ""):
        raise fail(path, f"holds the {labels.meta.get('split')!r} split; train-seg learns from train pseudo-labels")
    check_input_file(path, labels.provenance.get("inputs", {}), train.path, train.artifact_id, required=True)
    return labels


def run(cfg: TrainSegConfig) -> Path:
    labels = check_labels(cfg)
    return fit_and_predict(cfg, "train-seg", "seg", "PCAS + segmentation network", masks_from=Path(labels.path),
                           extra_inputs={f"{cfg.labels}/train.h5": labels.artifact_id})
