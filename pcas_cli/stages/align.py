"""`pcas align` (CMC, paper §3.2.1 eq. 1): coarse audio-visual alignment in a shared semantic space.

Starts from the Looking encoder (ckpt/visual.pt), adds the projection heads and trains them (and the encoder) with
cross-modal supervised contrast against the frozen listener's per-second audio tokens. Writes ckpt/align.pt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pcas_cli.stages._contrast import ContrastConfig, run_contrast


@dataclass(frozen=True)
class AlignConfig(ContrastConfig):
    cmc: bool = True  # CMC on
    cmpc: bool = False  # token-level terms belong to `refine`
    cmcc: bool = False


def run(cfg: AlignConfig) -> Path:
    return run_contrast(cfg, "align", default_init="visual")
