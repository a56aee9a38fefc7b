"""Small pieces the heads share: class means with any number of shots, distances."""

from __future__ import annotations

import torch
from torch import Tensor


def class_means(features: Tensor, labels: Tensor, ways: int | None = None) -> Tensor:
    """Mean feature per label `[N, D]`; works with unequal shots per class."""
    ways = int(labels.max()) + 1 if ways is None else ways
    sums = features.new_zeros(ways, features.shape[-1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def squared_distances(query: Tensor, prototypes: Tensor) -> Tensor:
    """`[M, N]` squared Euclidean distances, computed exactly (no matmul expansion)."""
    return (query[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)
