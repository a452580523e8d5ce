"""Detection-quality metrics (pure numpy)."""

from __future__ import annotations

import numpy as np


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise (as scikit-learn computes it)."""
    y = np.asarray(y, dtype=np.float64)
    positives = y.sum()
    if positives == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    ys, ss = y[order], np.asarray(scores)[order]
    tp = np.cumsum(ys)
    # evaluate only at the last index of each distinct score (ties share a threshold)
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall = tp_t / positives
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def precision_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return float(np.asarray(y)[order].mean()) if len(order) else 0.0
