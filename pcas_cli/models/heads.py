"""Small heads: the projection into CMC's shared semantic space and the EMA teacher update used by CMCC."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP whose L2-normalised output lives in the shared audio-visual semantic space (paper §3.2.1, CMC).

    Audio tokens, visual pooled tokens and visual class tokens each get their own head into the same `out_dim`
    space, so that cosine similarity between modalities is meaningful.

    Args:
        in_dim: input width.
        out_dim: shared-space width.
        hidden: hidden width.
        num_layers: linear layers (>= 1), GELU between them; ToCo's CTC head uses 3.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim), unit L2 norm."""
        return F.normalize(self.mlp(x), dim=-1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s, in place (ToCo's CTC teacher head, m = 0.9; method-facts §3).

    Buffers (e.g. BatchNorm statistics) are copied from the student.
    """
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)
