"""PT-MAP (Hu et al., 2021): power transform, then prototypes fitted to the query batch by
optimal transport (transductive).

Features get the power transform `sign(x) * |x| ** power` and L2 normalisation, are
centred on the mean of the episode's own features (support and query) and normalised
again, as in the paper's code. Starting from the support prototypes, `steps` rounds
follow: the queries' soft assignments are the Sinkhorn transport plan of
`exp(-lam * squared distance)` with every query carrying equal mass and every class an
equal share of the queries (the balanced-query assumption this head makes), and each
prototype moves by `alpha` towards the mean of its support features and of the queries,
weighted by their assignments. Logits are the log of the final assignments. No
randomness: deterministic. With fewer than two queries a class on average, nearest
support prototype on the same transform (inductive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import (
    MIN_QUERIES_PER_CLASS,
    class_means,
    power_transform,
    squared_distances,
)

SINKHORN_ITERATIONS = 1000
SINKHORN_TOLERANCE = 1e-6


def sinkhorn(cost: Tensor, lam: float) -> Tensor:
    """Transport plan `[M, N]` of `exp(-lam * cost)`: rows sum to 1 (one query each) and
    columns to M / N (balanced classes)."""
    plan = torch.softmax(-lam * cost.double(), dim=1)  # row-normalised from the start
    column_mass = cost.shape[0] / cost.shape[1]
    for _ in range(SINKHORN_ITERATIONS):
        plan = plan * (column_mass / plan.sum(0).clamp_min(1e-300))
        rows = plan.sum(1, keepdim=True)
        plan = plan / rows.clamp_min(1e-300)
        if (rows - 1).abs().max() < SINKHORN_TOLERANCE:
            break
    return plan.to(cost.dtype)


@register_head("pt-map")
class PTMAP(FewShotHead):
    def __init__(self, encoder: nn.Module, power: float | None = 0.5, steps: int = 30,
                 alpha: float = 0.2, lam: float = 10.0) -> None:
        super().__init__(encoder)
        self.power, self.steps, self.alpha, self.lam = power, steps, alpha, lam
        self.register_buffer("support_features", torch.empty(0), persistent=False)
        self.register_buffer("support_labels", torch.empty(0, dtype=torch.long),
                             persistent=False)

    @property
    def transductive(self) -> bool:
        return True

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        # kept power-transformed and normalised; centring waits for the query batch
        self.support_features = F.normalize(power_transform(self.encoder(support), self.power),
                                            dim=-1)
        self.support_labels = support_labels

    def joint(self, queries: int) -> bool:
        return queries >= MIN_QUERIES_PER_CLASS * (int(self.support_labels.max()) + 1)

    def forward(self, query: Tensor) -> Tensor:
        query = F.normalize(power_transform(self.encoder(query), self.power), dim=-1)
        support, labels = self.support_features, self.support_labels
        ways = int(labels.max()) + 1
        inductive = not self.joint(len(query))  # too few to use
        centre = (support if inductive else torch.cat([support, query.detach()])).mean(
            0, keepdim=True)
        support = F.normalize(support - centre, dim=-1)
        query = F.normalize(query - centre, dim=-1)
        prototypes = class_means(support, labels, ways)
        if inductive:
            return -self.lam * squared_distances(query, prototypes)
        support_hot = F.one_hot(labels, ways).to(support.dtype)
        features = torch.cat([support, query.detach()])
        for _ in range(self.steps):
            plan = sinkhorn(squared_distances(query.detach(), prototypes), self.lam)
            weights = torch.cat([support_hot, plan])
            target = (weights.T @ features) / weights.sum(0)[:, None]
            prototypes = prototypes + self.alpha * (target - prototypes)
        return sinkhorn(squared_distances(query, prototypes), self.lam).clamp_min(1e-12).log()
