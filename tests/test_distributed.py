"""`fit` under torchrun (2 CPU processes, gloo) against a single process, on the toy task of ddp_toy_script.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pcas_cli.training import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "ddp_toy_script.py"


def _run(out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + [str(SCRIPT), str(out), *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_two_processes_match_one_and_resume_exactly(tmp_path):
    single, ddp, resumed = tmp_path / "single", tmp_path / "ddp", tmp_path / "resumed"
    for out, nproc in ((single, 1), (ddp, 2)):
        done = _run(out, nproc)
        assert done.returncode == 0, done.stderr[-3000:]

    # (a) DDP keeps the ranks identical; (b) it equals one process with the same global batches.
    rank0, rank1, alone = _weights(ddp / "rank0.pt"), _weights(ddp / "rank1.pt"), _weights(single / "rank0.pt")
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
        torch.testing.assert_close(rank0[k], alone[k], rtol=0, atol=1e-5)
    assert not torch.equal(rank0["0.weight"], torch.nn.Linear(4, 8).weight)  # it trained (sanity)

    # Only rank 0 writes: one log record per epoch and per log step (68 items: 8 steps per epoch, log every 2).
    records = [json.loads(line) for line in (ddp / "ckpt" / "toy.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(2, 25, 2))
    assert sorted(p.name for p in (ddp / "ckpt").iterdir()) == ["toy.last.pt", "toy.log.jsonl", "toy.pt"]
    last = load_checkpoint(ddp / "ckpt" / "toy.last.pt")
    assert len(last["rng"]) == 2 and last["identity"]["world_size"] == 2

    # A 2-process run that crashes after epoch 1 and resumes ends with the same weights, bit for bit.
    crashed = _run(resumed, 2, "--crash-at-epoch", "1")
    assert crashed.returncode != 0 and load_checkpoint(resumed / "ckpt" / "toy.last.pt")["epoch"] == 1
    done = _run(resumed, 2, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    again = _weights(resumed / "rank0.pt")
    assert all(torch.equal(again[k], rank0[k]) for k in rank0)
    assert load_checkpoint(resumed / "ckpt" / "toy.pt")["artifact_id"] == load_checkpoint(ddp / "ckpt" / "toy.pt")[
        "artifact_id"]


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_error(tmp_path):
    # Rank 1's loss is NaN at step 2 (a logged step). Both ranks must raise the one-line error themselves: rank 0 is
    # the one whose output a user reads, and it must not be left to the launcher's SIGTERM or a collective's timeout.
    done = _run(tmp_path, 2, "--nan-at-step", "2", "--nan-rank", "1")
    assert done.returncode != 0
    for rank in (0, 1):
        message = (tmp_path / f"error-rank{rank}.txt").read_text()
        assert "non-finite at step 2 on 1 of 2 processes" in message, message
