"""What the transductive heads share: support prototypes on centred, L2-normalised features
(as SimpleShot's), refined with the query batch by each head's own rule, and the inductive
fallback when that batch is too small to use."""

from __future__ import annotations

from collections.abc import Callable

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
from fewshot.methods.linear_probe import train_linear


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


class TransductiveProbe(TransductivePrototypes):
    """The linear probe with the query batch: each head fits the probe on the batch by its
    own rule (`joint_logits`); for a batch too small to use, the plain probe, fitted once
    per support set (and kept in an adapted folder when adapt needed it)."""

    def __init__(self, encoder: nn.Module, base_mean: Tensor | None, steps: int, lr: float,
                 temperature: float, power: float | None, base_features: Tensor | None,
                 balance: bool) -> None:
        super().__init__(encoder, base_mean, temperature, power, base_features)
        self.steps, self.lr, self.balance = steps, lr, balance
        self.inductive: nn.Linear | None = None

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        super().process_support_set(support, support_labels)
        self.inductive = None  # fitted when first needed

    def fit(self, support: Tensor, batch: Tensor | None = None,
            query_loss: Callable[[Tensor], Tensor] | None = None) -> nn.Linear:
        """The probe on `support` features (the support labels), with `query_loss` on the
        `batch` when both are given."""
        return train_linear(support, self.support_labels, self.steps, self.lr,
                            self.temperature, balance=self.balance, query=batch,
                            query_loss=query_loss)

    def joint_logits(self, features: Tensor) -> Tensor:
        """Logits of a batch large enough to use (transformed features)."""
        raise NotImplementedError

    def forward(self, query: Tensor) -> Tensor:
        features = self.query_features(query)
        if not self.batch_too_small(features):
            return self.joint_logits(features)
        if self.inductive is None:  # too few to use: the plain probe
            self.inductive = self.fit(self.support_features.detach())
        return self.inductive(features)
