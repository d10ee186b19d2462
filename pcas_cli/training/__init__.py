"""Training machinery shared by every training stage: the loop, checkpoints, schedule, datasets, distributed setup.

A stage builds a `TrainTask` and an `OptimConfig` and calls `fit(...)`; see `loop.py` for the contract.
"""

from pcas_cli.training.checkpoint import load_checkpoint, save_checkpoint, weights_fingerprint
from pcas_cli.training.data import AugmentConfig, ClipDataset, FrameDataset
from pcas_cli.training.distributed import DistInfo, init_distributed, is_main
from pcas_cli.training.loop import FitResult, OptimConfig, TrainTask, fit, unwrap
from pcas_cli.training.schedule import lr_at

__all__ = [
    "AugmentConfig", "ClipDataset", "DistInfo", "FitResult", "FrameDataset", "OptimConfig", "TrainTask", "fit",
    "init_distributed", "is_main", "load_checkpoint", "lr_at", "save_checkpoint", "unwrap", "weights_fingerprint",
]
