"""`pcas refine` (CMPC eq. 2 + CMCC eq. 3, paper §3.2.2): fine-grained, token-level audio-visual alignment.

Starts from ckpt/align.pt (or ckpt/visual.pt for the "w/o CMC" ablations), labels patches by their similarity to the
second's audio token and contrasts patch tokens (CMPC) and crop class tokens (CMCC); CMC stays on unless switched off.
Any combination of the three terms can be trained (paper Table 4). Writes ckpt/<name>.pt (default refine.pt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pcas_cli.stages._contrast import ContrastConfig, run_contrast


@dataclass(frozen=True)
class RefineConfig(ContrastConfig):
    cmc: bool = True  # keep CMC during refinement
    cmpc: bool = True  # CMPC on
    cmcc: bool = True  # CMCC on


def run(cfg: RefineConfig) -> Path:
    return run_contrast(cfg, "refine", default_init="align")
