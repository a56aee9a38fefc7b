"""What the transductive heads share: support prototypes on centred, L2-normalised features
(as SimpleShot's), refined with the query batch by each head's own rule, and the inductive
fallback when that batch is too small to use."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead
from fewshot.methods.common import MIN_QUERIES_PER_CLASS, class_means, cosine
from fewshot.methods.simpleshot import centre_normalise


class TransductivePrototypes(FewShotHead):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 temperature: float = 10.0) -> None:
        super().__init__(encoder)
        self.temperature = temperature
        self.register_buffer("base_mean", torch.empty(0) if base_mean is None
                             else base_mean.detach().float().clone(), persistent=False)
        self.register_buffer("support_features", torch.empty(0), persistent=False)
        self.register_buffer("support_labels", torch.empty(0, dtype=torch.long),
                             persistent=False)
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    @property
    def transductive(self) -> bool:
        return True

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.support_features = centre_normalise(self.encoder(support), self.base_mean)
        self.support_labels = support_labels
        self.prototypes = class_means(self.support_features, support_labels)

    def refined(self, query: Tensor) -> Tensor:
        """Prototypes refined with the (transformed) query batch."""
        raise NotImplementedError

    def forward(self, query: Tensor) -> Tensor:
        features = centre_normalise(self.encoder(query), self.base_mean)
        if len(features) < MIN_QUERIES_PER_CLASS * self.prototypes.shape[0]:
            return self.temperature * cosine(features, self.prototypes)  # too few to use
        return self.temperature * cosine(features, self.refined(features.detach()))
