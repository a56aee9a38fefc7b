"""Temperature scaling of an adapted head, fitted on its own support set.

A clinic has no validation images of a rare class, only the support set. Each image of
it is scored by the head refitted on the other folds (stratified k-fold, at most
`MAX_FOLDS`, at most the smallest class's count), and the temperature that minimises
the negative log-likelihood of those out-of-fold logits divides the final head's
logits. Held-out images never choose the temperature; they only score it (ECE, Brier).

Refitting happens on precomputed features, so a fold costs a feature-based head's fit
and nothing more. A head that re-runs the encoder (finetune) is calibrated through a
proxy: the folds of the linear probe it starts from, on the same features; the
MAML family re-runs its inner loop per fold (a few steps on the support images).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

MAX_FOLDS = 5
ECE_BINS = 10
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
"""The grid searched for T: a 1-D objective is cheap, and a grid never diverges."""
LOG_T_PRIOR = 1.0
"""Standard deviation of a normal prior on log T. A few support images are often all
classified right out of fold, and then the likelihood alone drives T to 0 (certainty
from fifteen images); the prior keeps T near 1 unless the folds give evidence."""


def made_worse(c: dict[str, Any]) -> bool:
    """A fitted temperature left the held-out ECE higher than the raw softmax had it."""
    return (c.get("ece_before") is not None and c["ece_after"] > c["ece_before"]
            and c["fit"] not in ("off", "uncalibrated"))


def fold_count(labels: Tensor) -> int:
    """Folds a support set allows: 0 when some class has a single image."""
    smallest = int(torch.bincount(labels).min()) if len(labels) else 0
    return min(MAX_FOLDS, smallest) if smallest >= 2 else 0


def stratified_folds(y: np.ndarray, folds: int, seed: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: each class's images, in a seeded order, dealt round-robin
    over the folds, so every fold's train part keeps every class (as sklearn's
    StratifiedKFold does; written here because importing scikit-learn costs `fewshot
    adapt` about 2 s on the 2-core machine, a fifth of its budget)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = (offset + np.arange(len(members))) % folds
        offset += len(members)  # classes start where the last left off: folds stay even
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f))
            for f in range(folds)]


def out_of_fold_logits(fit_predict: Callable[[Tensor, Tensor, Tensor], Tensor],
                       labels: Tensor, folds: int, seed: int) -> Tensor:
    """Logits of every support image from a head fitted without its fold.

    `fit_predict(train_index, train_labels, test_index)` fits on the train rows and
    returns logits `[len(test_index), ways]`; train labels keep every class present
    (stratified folds with at least 2 images a class).
    """
    out: Tensor | None = None
    y = labels.cpu().numpy()
    for train, test in stratified_folds(y, folds, seed):
        train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
        logits = fit_predict(train_t, labels[train_t], test_t).float().cpu()
        if out is None:
            out = torch.zeros(len(y), logits.shape[1])
        out[test_t] = logits
    assert out is not None
    return out


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in TEMPERATURES of highest posterior: the summed NLL of softmax(logits / T)
    plus the LOG_T_PRIOR penalty on log T."""
    logits = logits.double()
    best, best_loss = 1.0, float("inf")
    for t in TEMPERATURES:
        nll = float(torch.nn.functional.cross_entropy(logits / t, labels, reduction="sum"))
        loss = nll + float(np.log(t)) ** 2 / (2 * LOG_T_PRIOR ** 2)
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best


def reliability(probs: Tensor, labels: Tensor, bins: int = ECE_BINS
                ) -> list[dict[str, float]]:
    """Per equal-width confidence bin (top class): count, mean confidence, accuracy."""
    confidence, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    out = []
    for i in range(bins):
        inside = (confidence > edges[i]) & (confidence <= edges[i + 1])
        if i == 0:
            inside |= confidence == 0
        n = int(inside.sum())
        out.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": n,
                    "confidence": float(confidence[inside].double().mean()) if n else None,
                    "accuracy": float(correct[inside].mean()) if n else None})
    return out


def ece(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    total = len(labels)
    return sum(b["count"] / total * abs(b["confidence"] - b["accuracy"])
               for b in reliability(probs, labels, bins) if b["count"])


def brier(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot label."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def scores(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, Any]:
    """ECE, Brier and reliability bins of held-out logits before (T = 1) and after
    calibration."""
    if len(labels) == 0:
        return {"ece_before": None, "ece_after": None, "brier_before": None,
                "brier_after": None, "reliability": None}
    before = torch.softmax(logits.double(), dim=1)
    after = torch.softmax(logits.double() / temperature, dim=1)
    return {"ece_before": ece(before, labels), "ece_after": ece(after, labels),
            "brier_before": brier(before, labels), "brier_after": brier(after, labels),
            "reliability": {"before": reliability(before, labels),
                            "after": reliability(after, labels)}}


def record(temperature: float, fit: str, heldout_logits: Tensor, heldout_labels: Tensor,
           folds: int | None = None, proxy: str | None = None) -> dict[str, Any]:
    """The `calibration` block of adapted.json (`schema.Calibration`)."""
    return {"temperature": temperature, "fit": fit, "folds": folds, "proxy": proxy,
            **scores(heldout_logits, heldout_labels, temperature),
            "heldout": int(len(heldout_labels))}
