"""SimpleShot (Wang et al., 2019): nearest centroid on features centred on the base-class
mean and L2-normalised ("CL2N"). Centring needs the base mean, which pretrain and
meta-train store in the run directory; without it the features are only normalised.

`power=BETA` first applies the power transform `sign(x) * |x| ** BETA` and then centres on
the mean of the transformed base features (computed from the base subset the run stores),
the transform PT-MAP found to make features more Gaussian; the linear probe and the
transductive heads take the same option."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import (
    centring_mean,
    class_means,
    squared_distances,
    transform_features,
)


@register_head("simpleshot")
class SimpleShot(FewShotHead):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 power: float | None = None, base_features: Tensor | None = None) -> None:
        super().__init__(encoder)
        self.power = power
        self.register_buffer("base_mean", centring_mean(power, base_mean, base_features),
                             persistent=False)
        self.register_buffer("whitening", torch.empty(0), persistent=False)
        """Set by `--unlabeled --whiten` (fewshot.alignment); empty: not whitened."""
        self.register_buffer("centroids", torch.empty(0), persistent=False)

    def embed(self, images: Tensor) -> Tensor:
        return transform_features(self.encoder(images), self.power, self.base_mean,
                                  self.whitening)

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.centroids = class_means(self.embed(support), support_labels)

    def forward(self, query: Tensor) -> Tensor:
        return -squared_distances(self.embed(query), self.centroids)
