"""Classification metrics for the audio/visual classifiers (Table 3: frame-level audio classification)."""

from __future__ import annotations

from typing import Callable

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


def paired_bootstrap_difference(score: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
                                targets: np.ndarray, groups: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """score(a, targets) - score(b, targets) over `resamples` bootstrap draws of the groups (clips) with replacement,
    both scored on the same drawn rows: a paired bootstrap, (resamples,). a, b, targets: (N, C) rows (seconds);
    groups: (N,) the clip of each row. Whole clips are drawn because a clip's seconds are not independent draws
    (as metrics.bootstrap_miou; the same seed draws the same clip indices)."""
    ids, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(ids))]
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    out = np.empty(resamples)
    for r, drawn in enumerate(draws):
        rows = np.concatenate([rows_of[g] for g in drawn])
        out[r] = score(a[rows], targets[rows]) - score(b[rows], targets[rows])
    return out
