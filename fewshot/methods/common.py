"""Small pieces the heads share: class means with any number of shots, distances, the
feature transform, and the MMD that both the probe and the training objectives align with."""

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


def power_transform(features: Tensor, power: float | None) -> Tensor:
    """`sign(x) * |x| ** power` (Hu et al., 2021): pulls skewed, non-negative features (a
    ReLU network's) towards Gaussian; `None` leaves them as they are."""
    if power is None:
        return features
    return features.sign() * features.abs().pow(power)


def centring_mean(power: float | None, base_mean: Tensor | None,
                  base_features: Tensor | None) -> Tensor:
    """The vector a head centres its (power-transformed) features on.

    Without a power it is the base mean. With one it is the mean of the transformed base
    features, which is not the transformed mean, so it needs base features; empty when
    neither is known (features are then only normalised, and an adapted head gets its
    saved vector back)."""
    if power is None:
        return torch.empty(0) if base_mean is None else base_mean.detach().float().clone()
    if base_features is None or not base_features.numel():
        return torch.empty(0)
    return power_transform(base_features.detach().float(), power).mean(0)


def transform_features(features: Tensor, power: float | None, centre: Tensor,
                       whitening: Tensor | None = None) -> Tensor:
    """Power transform, centring (when a centre is known), whitening (when a matrix is
    known: `alignment --whiten`) and L2 normalisation: the feature transform every
    feature-based head with a `power` option shares."""
    features = power_transform(features, power)
    if centre.numel():
        features = features - centre.to(features)
    if whitening is not None and whitening.numel():
        features = features @ whitening.to(features)
    return F.normalize(features, dim=-1)


WHITENING_SHRINKAGE = 0.1
"""Added to every eigenvalue, as a fraction of their mean, before whitening: the
covariance of a few thousand images in hundreds of dimensions has near-zero directions
that plain whitening would blow up. Chosen on wbc-to-rbc's val classes among 1, 0.1 and
0.01 (experiments/results/whitening_selection.md)."""


def whitening_matrix(features: Tensor, shrinkage: float = WHITENING_SHRINKAGE) -> Tensor:
    """The symmetric (ZCA) whitening matrix of `features` `[N, D]`, shrunk towards the
    identity: `V diag(1 / sqrt(l + shrinkage * mean(l))) V^T` of their covariance. Cosine
    similarities after it weigh every direction of the new domain's variation alike, so
    directions that the training domain stretched no longer dominate the distance."""
    centred = features.double() - features.double().mean(0)
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp_min(0)
    if float(values.mean()) <= 0:  # identical features: nothing to whiten
        return torch.eye(features.shape[-1], dtype=features.dtype)
    scale = (values + shrinkage * values.mean()).rsqrt()
    return ((vectors * scale) @ vectors.T).to(features.dtype)


def mmd(source: Tensor, target: Tensor, scales: tuple[float, ...] = (0.25, 0.5, 1, 2, 4)
        ) -> Tensor:
    """Squared multi-kernel MMD (biased estimate): Gaussian kernels whose bandwidths are
    `scales` times the mean squared distance of the joint batch (detached)."""
    x = torch.cat([source, target]).float()
    d2 = torch.cdist(x, x).pow(2)
    base = d2.detach().sum() / (len(x) * (len(x) - 1))
    kernel = sum(torch.exp(-d2 / (base * s).clamp_min(1e-12)) for s in scales)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
