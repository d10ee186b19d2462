"""Toy regression trained with `fit`, alone or under torchrun; used by tests/test_distributed.py.

Usage: python tests/ddp_toy_script.py OUT_DIR [--crash-at-epoch E] [--resume] [--nan-at-step S --nan-rank R]
Each rank saves its final weights to OUT_DIR/rank<r>.pt; rank 0 alone writes OUT_DIR/ckpt/.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pcas_cli.errors import PcasError
from pcas_cli.training import OptimConfig, TrainTask, fit

CFG = OptimConfig(optimizer="adamw", lr=0.05, weight_decay=0.01, epochs=3, warmup_epochs=1, min_lr_ratio=0.1,
                  batch_size=8, log_every=2, seed=3, clip_grad_norm=1.0)
PROV = {"stage": "toy", "config": {}, "seed": 3, "inputs": {}}


class Toy(TrainTask):
    select_metric = "neg_mse"

    def __init__(self, crash_at_epoch: int | None, nan_at_step: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(68, 4, generator=g)  # 68 = 8 full global batches + a dropped tail
        self.data = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))
        self.crash_at_epoch = crash_at_epoch
        self.nan_at_step = nan_at_step  # this rank's loss turns NaN at this step (1-based)
        self.steps = 0

    def train_dataset(self):
        return self.data

    def on_epoch_start(self, epoch):
        if epoch == self.crash_at_epoch:
            raise SystemExit(3)  # simulated crash after the previous epoch's checkpoint

    def loss_step(self, model, batch):
        x, y = batch
        self.steps += 1
        mse = ((model(x).squeeze(-1) - y) ** 2).mean()
        # a mean: DDP's gradient average = the global mean
        return {"mse": mse * float("nan") if self.steps == self.nan_at_step else mse}

    def evaluate(self, model):
        x, y = self.data.tensors
        return {"neg_mse": -float(((model(x).squeeze(-1) - y) ** 2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-at-epoch", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--nan-at-step", type=int, default=None, help="this step's loss is NaN on the rank given")
    parser.add_argument("--nan-rank", type=int, default=0)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    task = Toy(args.crash_at_epoch, args.nan_at_step if rank == args.nan_rank else None)
    try:
        fit(task, CFG, args.out / "ckpt", "toy", PROV, resume=args.resume, device="cpu")
    except PcasError as e:  # what the CLI would print; the test reads which ranks said it
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"error-rank{rank}.txt").write_text(str(e))
        raise SystemExit(1)
    torch.save(task.model.state_dict(), args.out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
