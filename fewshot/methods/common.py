"""Small pieces the heads share: class means with any number of shots, and augmentation."""

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


def flip_rotate(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and 90-degree rotations per image.

    Both keep the cell's size and shape statistics (no rescaling: macrocytes and
    microcytes differ by size), and need square images for the rotation.
    """
    flips = torch.rand(len(images), generator=generator) < 0.5
    turns = torch.randint(0, 4, (len(images),), generator=generator)
    images = torch.where(flips.to(images.device)[:, None, None, None],
                         images.flip(-1), images)
    out = images.clone()
    for k in range(1, 4):
        chosen = (turns == k).nonzero().flatten().to(images.device)
        if len(chosen):
            out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return out
