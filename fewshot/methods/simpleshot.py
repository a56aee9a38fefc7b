"""SimpleShot (Wang et al., 2019): nearest centroid on features centred on the base-class
mean and L2-normalised ("CL2N"). Centring needs the base mean, which pretrain and
meta-train store in the run directory; without it the features are only normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import class_means, squared_distances


def centre_normalise(features: Tensor, base_mean: Tensor) -> Tensor:
    if base_mean.numel():
        features = features - base_mean.to(features)
    return F.normalize(features, dim=-1)


@register_head("simpleshot")
class SimpleShot(FewShotHead):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None) -> None:
        super().__init__(encoder)
        self.register_buffer("base_mean", torch.empty(0) if base_mean is None
                             else base_mean.detach().float().clone(), persistent=False)
        self.register_buffer("centroids", torch.empty(0), persistent=False)

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        features = centre_normalise(self.encoder(support), self.base_mean)
        self.centroids = class_means(features, support_labels)

    def forward(self, query: Tensor) -> Tensor:
        features = centre_normalise(self.encoder(query), self.base_mean)
        return -squared_distances(features, self.centroids)
