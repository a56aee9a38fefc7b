"""The numbers every result reports: mean ± 95% CI over episodes, per-episode accuracy,
macro-F1, balanced accuracy and one-vs-rest AUROC, paired differences between methods
scored on the same episodes, and the leave-out estimate of an adapted model (Wilson
interval, per-class sensitivity, confusion matrix).

Pure functions of arrays and tensors: evaluation, validation during training and adapt
all score through here, so one number means the same thing everywhere.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import torch
from torch import Tensor

CONFUSION_MIN_HELDOUT = 2
"""A confusion matrix is reported when every class has at least this many held-out images."""



CI_Z = 1.96


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% CI half-width 1.96·std(ddof=1)/√E (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(CI_Z * values.std(ddof=1) / math.sqrt(len(values)))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """One-vs-rest AUROC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def episode_metrics(logits: Tensor, labels: Tensor, ways: int) -> dict[str, Any]:
    """Accuracy, macro-F1, balanced accuracy, macro OvR AUROC and per-class hits."""
    probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
    y = labels.cpu().numpy()
    pred = logits.argmax(-1).cpu().numpy()
    f1s, recalls, aucs, hits, totals = [], [], [], [], []
    for c in range(ways):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
        aucs.append(auroc(probs[:, c], y == c))
        hits.append(tp)
        totals.append(tp + fn)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1s)),
            "balanced_accuracy": float(np.mean(recalls)), "auroc": float(np.nanmean(aucs)),
            "hits": hits, "totals": totals}


def accuracy_difference(reference: list[float], other: list[float]) -> dict[str, Any]:
    """Mean per-episode accuracy difference (other − reference) with its 95% CI, on the
    episodes both have (a shorter run's are the first episodes of the longer one's)."""
    n = min(len(reference), len(other))
    mean, ci = mean_ci(np.asarray(other[:n]) - np.asarray(reference[:n]))
    return {"episodes": n, "mean": mean, "ci95": ci}


def wilson_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sound for small n and for 0% or 100%."""
    if total == 0:
        return float("nan"), float("nan")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def leave_out_metrics(true: np.ndarray, pred: np.ndarray, classes: list[str],
                      new_classes: int) -> dict[str, Any]:
    """Accuracy with a 95% Wilson CI over held-out images, per-class sensitivity, and
    the confusion matrix (rows true new class, columns predicted class) when every new
    class has at least CONFUSION_MIN_HELDOUT held-out images."""
    total = int(len(true))
    if total == 0:
        return {"heldout": 0, "accuracy": None, "ci95": None,
                "ci_method": "Wilson score interval over held-out images",
                "note": "no held-out images: put more than --shots images in a class "
                        "to get a leave-out estimate"}
    correct = int((true == pred).sum())
    low, high = wilson_interval(correct, total)
    per_class = {}
    for c in range(new_classes):
        mask = true == c
        n = int(mask.sum())
        if n:
            hits = int((pred[mask] == c).sum())
            per_class[classes[c]] = {"heldout": n, "correct": hits, "sensitivity": hits / n}
    metrics: dict[str, Any] = {
        "heldout": total, "correct": correct, "accuracy": correct / total,
        "ci95": [low, high], "ci_method": "Wilson score interval over held-out images",
        "per_class": per_class,
    }
    counts = np.bincount(true, minlength=new_classes)[:new_classes]
    if (counts >= CONFUSION_MIN_HELDOUT).all():
        matrix = np.zeros((new_classes, len(classes)), dtype=np.int64)
        np.add.at(matrix, (true, pred), 1)
        metrics["confusion"] = {"rows": classes[:new_classes], "columns": classes,
                                "matrix": matrix.tolist()}
    return metrics


