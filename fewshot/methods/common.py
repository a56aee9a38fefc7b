"""Small pieces the heads share: class means with any number of shots, distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def cosine(features: Tensor, prototypes: Tensor) -> Tensor:
    """`[M, N]` cosine similarities."""
    return F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


MIN_QUERIES_PER_CLASS = 2
"""Transductive heads use a query batch of at least this many images a class on average;
with fewer (a single image to predict) they fall back to their inductive rule."""
