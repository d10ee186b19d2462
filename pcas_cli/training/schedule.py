"""Optimisation settings and the learning-rate schedule, a pure function of the step (linear warm-up, then cosine).

The paper trains with Adam for 9 epochs, the first 2 of them warm-up (PCAS §4 "Implementation details"); the loop
multiplies every parameter group's own base learning rate by `lr_at(step, ...)` before each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pcas_cli.errors import PcasError


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings shared by the training stages (paper: Adam, 9 epochs, 2 warm-up; PCAS §4)."""

    optimizer: Literal["adam", "adamw"] = "adam"  # Adam as in the paper; AdamW decouples weight decay
    lr: float = 6e-4  # base learning rate of parameter groups that do not set their own "lr"
    weight_decay: float = 0.0  # L2 (adam) or decoupled (adamw) decay, for groups without their own
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates
    epochs: int = 9  # passes over the training set
    warmup_epochs: float = 2.0  # linear warm-up length, in epochs (fractions allowed)
    min_lr_ratio: float = 0.0  # cosine decay ends at this fraction of each group's base lr
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this value (0 = off)
    batch_size: int = 8  # GLOBAL batch: split evenly over the processes of a distributed run
    num_workers: int = 0  # DataLoader worker processes per training process
    amp: bool = False  # mixed precision (float16 autocast + GradScaler); used only on CUDA
    log_every: int = 10  # write a step record to the log every this many steps
    seed: int = 0  # seeds python/numpy/torch (plus the rank), the shuffle and the workers
    tensorboard: bool = False  # also write TensorBoard scalars to <ckpt_dir>/<name>.tb (needs tensorboard)

    def __post_init__(self) -> None:
        checks = {"epochs >= 1": self.epochs >= 1, "batch_size >= 1": self.batch_size >= 1, "lr > 0": self.lr > 0,
                  "warmup_epochs >= 0": self.warmup_epochs >= 0, "0 <= min_lr_ratio <= 1": 0 <= self.min_lr_ratio <= 1,
                  "num_workers >= 0": self.num_workers >= 0, "log_every >= 1": self.log_every >= 1,
                  "clip_grad_norm >= 0": self.clip_grad_norm >= 0}
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise PcasError(f"optimisation settings: need {', '.join(broken)}")


def lr_at(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier on the base learning rate for 0-based optimisation step `step`.

    Warm-up rises linearly, reaching 1 on the last warm-up step: `(step + 1) / warmup_steps` (the first step already
    learns a little instead of wasting an update at lr 0). Afterwards a half cosine falls from 1 to `min_ratio`,
    reached at `total_steps` (steps at or past the end stay at `min_ratio`).

    Args:
        step: 0-based index of the step about to be taken.
        total_steps: steps in the whole run (epochs x steps per epoch).
        warmup_steps: leading steps spent warming up (0 = none).
        min_ratio: final multiplier, as a fraction of the base learning rate.
    """
    if step < 0 or total_steps <= 0 or warmup_steps < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"bad schedule arguments: step={step} total={total_steps} warmup={warmup_steps} "
                         f"min_ratio={min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0  # the whole run is warm-up: nothing left to decay over
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
