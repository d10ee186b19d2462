"""Small heads: the projection into CMC's shared semantic space."""

from __future__ import annotations

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
