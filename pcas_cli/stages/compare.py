"""`pcas compare`: is one row's mIoU really above another's, or within what another draw of test clips would give?

Every metrics file `pcas eval` writes carries its scored clips' sufficient statistics (`clips`: per clip and class,
the summed frame IoUs and the frames that count). Resampling the clips with replacement and recomputing the official
mIoU gives a bootstrap distribution (metrics.bootstrap_miou); two files over the same clips resampled with the same
draws give a *paired* one: a clip that is hard for one row is hard for the other, so their difference is far
tighter than two separate intervals suggest. Not part of the official protocol; a reading aid for small splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pcas_cli.console import CONSOLE
from pcas_cli.errors import PcasError, fail
from pcas_cli.metrics import BOOTSTRAP_RESAMPLES, bootstrap_miou, percentile_interval


@dataclass(frozen=True)
class CompareConfig:
    reference: Path  # metrics JSON every other row is compared with (e.g. a baseline, or the upper bound)
    others: tuple[Path, ...]  # metrics JSON files of the rows to compare
    resamples: int = BOOTSTRAP_RESAMPLES  # bootstrap resamples of the clips
    seed: int = 0  # the draws (same seed, same numbers)


def paired_samples(a: dict[str, Any], b: dict[str, Any], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Bootstrap mIoU samples (resamples,) of two metrics dicts drawn over the same resampled clips, or None where
    either lacks the clips' statistics (written before 2026-12-03) or they were not scored alike: other clips, other
    ground truth (clip ids are positions, so a regenerated data set reuses them) or another protocol."""
    ca, cb = a.get("clips"), b.get("clips")
    if not ca or not cb or ca["ids"] != cb["ids"]:
        return None
    for key in ("features_id", "protocol"):  # absent from older metrics files: not checked there
        if key in a and key in b and a[key] != b[key]:
            return None
    return (bootstrap_miou(ca["iou_sum"], ca["count"], resamples, seed),
            bootstrap_miou(cb["iou_sum"], cb["count"], resamples, seed))


def load_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON from `pcas eval` that holds the clips' statistics; a clear error otherwise."""
    try:
        m = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise fail(path, "no such metrics file") from None
    except (OSError, ValueError) as e:
        raise fail(path, f"not a readable metrics JSON ({e})") from None
    if not isinstance(m, dict) or "miou" not in m:
        raise fail(path, "not a metrics file written by pcas eval (no 'miou')")
    if not m.get("clips"):
        raise fail(path, "has no per-clip statistics (written before 2026-12-03); re-run pcas eval on its predictions")
    return m


def compare(reference: dict[str, Any], other: dict[str, Any], resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = 0) -> dict[str, Any] | None:
    """other's mIoU interval, other - reference and other / reference in mIoU, each with its 95% paired-bootstrap
    interval; None where the two were not scored on the same clips."""
    samples = paired_samples(other, reference, resamples, seed)
    if samples is None:
        return None
    s_other, s_ref = samples
    share = np.divide(s_other, s_ref, out=np.full_like(s_other, np.nan), where=s_ref > 0)
    return {"miou": other["miou"], "miou_ci95": percentile_interval(s_other),
            "difference": other["miou"] - reference["miou"], "difference_ci95": percentile_interval(s_other - s_ref),
            "share": other["miou"] / reference["miou"] if reference["miou"] > 0 else None,
            "share_ci95": percentile_interval(share[np.isfinite(share)]) if np.isfinite(share).any() else None}


def run(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Print one row per compared file; returns the rows."""
    if cfg.resamples < 1:
        raise PcasError(f"--resamples must be >= 1, got {cfg.resamples}")
    reference = load_metrics(cfg.reference)
    clips = len(reference["clips"]["ids"])
    table = Table(title=f"paired bootstrap against {reference.get('name') or cfg.reference} ({clips} clips, "
                        f"{cfg.resamples} resamples; mIoU x100, 95% intervals)")
    for col in ("row", "mIoU", "mIoU 95% CI", "difference", "difference 95% CI", "share", "share 95% CI"):
        table.add_column(col, justify="left" if col == "row" else "right")
    rows = []
    for path in cfg.others:
        other = load_metrics(path)
        result = compare(reference, other, cfg.resamples, cfg.seed)
        if result is None:
            raise fail(path, f"scored other clips, ground truth or protocol than {cfg.reference}; compare rows "
                             "scored alike on the same split")
        (lo, hi), (d_lo, d_hi) = result["miou_ci95"], result["difference_ci95"]
        share, share_ci = result["share"], result["share_ci95"]
        table.add_row(other.get("name") or str(path), f"{100 * other['miou']:.2f}", f"{100 * lo:.2f} .. {100 * hi:.2f}",
                      f"{100 * result['difference']:+.2f}", f"{100 * d_lo:+.2f} .. {100 * d_hi:+.2f}",
                      "–" if share is None else f"{100 * share:.1f}%",
                      "–" if share_ci is None else f"{100 * share_ci[0]:.1f}% .. {100 * share_ci[1]:.1f}%")
        rows.append({"path": str(path), **result})
    CONSOLE.print(table)
    return rows
