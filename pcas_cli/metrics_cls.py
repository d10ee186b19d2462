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


def set_accuracy_by_sources(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, dict]:
    """Per-second decisions split by how many classes truly sound: "silent" (none), "one", "overlap" (two or more
    at once, where listeners fail most). probs, targets: (N, C).

    Each group gets `seconds`, its row count; `exact`, the share of its rows whose set at p > threshold is exactly
    right (silent: nothing heard); `top_n`, the share of its rows whose n highest-scoring classes are exactly the n
    true ones (threshold-free; ties broken by class order; None for silent rows). An empty group gets None shares."""
    truth = targets.astype(bool)
    n_true = truth.sum(axis=1)  # (N,)
    exact = np.all((probs > threshold) == truth, axis=1)
    ranks = np.argsort(np.argsort(-probs, axis=1, kind="stable"), axis=1)  # (N, C): 0 = the row's best class
    ranked_first = np.all((ranks < n_true[:, None]) == truth, axis=1)
    groups = {"silent": n_true == 0, "one": n_true == 1, "overlap": n_true >= 2}
    return {name: {"seconds": int(rows.sum()),
                   "exact": float(exact[rows].mean()) if rows.any() else None,
                   "top_n": float(ranked_first[rows].mean()) if rows.any() and name != "silent" else None}
            for name, rows in groups.items()}
