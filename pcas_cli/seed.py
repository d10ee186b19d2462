"""Seeding: every stage calls seed_everything first and stores the seed in its outputs."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels (same seed, same numbers)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS reuses its workspace nondeterministically unless told its size before its first call (CUDA >= 10.2;
        # torch's reproducibility notes); without it deterministic mode only warns, and CUDA reruns drift.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
