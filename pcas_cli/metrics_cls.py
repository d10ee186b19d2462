"""Classification metrics for the audio/visual classifiers (Table 3: frame-level audio classification)."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties broken by order). NaN if no positives."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order].astype(bool)
    if not hits.any():
        return float("nan")
    ranks = np.arange(1, len(hits) + 1)
    precision_at_hit = np.cumsum(hits)[hits] / ranks[hits]
    return float(precision_at_hit.mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over classes that have at least one positive. scores/targets: (N, C)."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else 0.0


def exact_set_accuracy(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> float:
    """Share of rows whose predicted class set (prob > threshold) equals the true set exactly. (N, C)."""
    if len(probs) == 0:
        return 0.0
    return float(np.mean(np.all((probs > threshold) == targets.astype(bool), axis=1)))
