"""What the transductive heads share: support prototypes on centred, L2-normalised features
(as SimpleShot's), refined with the query batch by each head's own rule, and the inductive
fallback when that batch is too small to use."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead
from fewshot.methods.common import (
    MIN_QUERIES_PER_CLASS,
    centring_mean,
    class_means,
    cosine,
    transform_features,
)


class TransductivePrototypes(FewShotHead):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 temperature: float = 10.0, power: float | None = None,
                 base_features: Tensor | None = None) -> None:
        super().__init__(encoder)
        self.temperature, self.power = temperature, power
        self.register_buffer("base_mean", centring_mean(power, base_mean, base_features),
                             persistent=False)
        self.register_buffer("whitening", torch.empty(0), persistent=False)
        """Set by `--unlabeled --whiten` (fewshot.alignment); empty: not whitened."""
        self.register_buffer("support_features", torch.empty(0), persistent=False)
        self.register_buffer("support_labels", torch.empty(0, dtype=torch.long),
                             persistent=False)
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    @property
    def transductive(self) -> bool:
        return True

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.support_features = transform_features(self.encoder(support), self.power,
                                                   self.base_mean, self.whitening)
        self.support_labels = support_labels
        self.prototypes = class_means(self.support_features, support_labels)

    def refined(self, query: Tensor) -> Tensor:
        """Prototypes refined with the (transformed) query batch."""
        raise NotImplementedError

    def query_features(self, query: Tensor) -> Tensor:
        """The query batch under the same transform as the support."""
        return transform_features(self.encoder(query), self.power, self.base_mean, self.whitening)

    def joint(self, queries: int) -> bool:
        """At least MIN_QUERIES_PER_CLASS queries a class on average; fewer: the inductive
        rule."""
        return queries >= MIN_QUERIES_PER_CLASS * self.prototypes.shape[0]

    def batch_too_small(self, features: Tensor) -> bool:
        return not self.joint(len(features))

    def forward(self, query: Tensor) -> Tensor:
        features = self.query_features(query)
        if self.batch_too_small(features):
            return self.temperature * cosine(features, self.prototypes)
        return self.temperature * cosine(features, self.refined(features.detach()))
