"""LaplacianShot (Ziko et al., 2020): nearest-prototype assignments smoothed over the
query batch's nearest-neighbour graph (transductive).

Features are centred on the base mean (when known) and L2-normalised, as for SimpleShot.
Each query's unary cost is its scaled squared distance to each prototype,
`temperature / 2 * |x - m_c|^2` (at the default temperature 2, the paper's squared
distance), the prototypes rectified with the query batch as in BD-CSPN (as the paper's best
results have them) unless `rectify=false`; with `lam=0` and `rectify=false` the logits are
SimpleShot's times `temperature / 2`. The Laplacian term rewards a query for taking the
classes of its `neighbours` nearest other queries (cosine, a binary graph as in the
paper's code; the default 3 neighbours and weight 0.7 are the paper's, as easyfsl's
`LaplacianShot` has them); the bound
optimisation of the paper updates every assignment at once,
`Y = softmax(-unary + lam * W @ Y)`, until it stops changing (at most `iterations`).
Logits are the last `-unary + lam * W @ Y`, whose softmax is the final assignment. No
randomness. With fewer than two queries a class on average, that scaled SimpleShot rule
(inductive).

`probe=true` takes the unary term from the linear probe instead (its defaults: 100 Adam
steps from the prototypes, a bias, class-balanced loss): `-unary` is the probe's logits,
fitted once per support set, and the graph smooths them the same way; the fallback is then
the probe itself, and `rectify` does not apply.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import register_head
from fewshot.methods.bd_cspn import rectified_prototypes
from fewshot.methods.common import cosine, squared_distances
from fewshot.methods.linear_probe import LR, STEPS, TEMPERATURE, train_linear
from fewshot.methods.transductive import TransductivePrototypes

TOLERANCE = 1e-6


def knn_graph(features: Tensor, neighbours: int) -> Tensor:
    """`[M, M]` binary affinities: row `i` marks the `neighbours` nearest other rows."""
    similarity = cosine(features, features)
    similarity.fill_diagonal_(-float("inf"))  # never one's own neighbour
    k = min(neighbours, len(features) - 1)
    nearest = similarity.topk(k, dim=1).indices
    return torch.zeros_like(similarity).scatter_(1, nearest, 1.0)


@register_head("laplacianshot")
class LaplacianShot(TransductivePrototypes):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 temperature: float = 2.0, power: float | None = None,
                 base_features: Tensor | None = None, lam: float = 0.7,
                 neighbours: int = 3, rectify: bool = True, iterations: int = 20,
                 probe: bool = False) -> None:
        super().__init__(encoder, base_mean, temperature, power, base_features)
        if lam < 0 or neighbours < 1 or iterations < 1:
            raise UsageError(f"laplacianshot: lam={lam}, neighbours={neighbours}, "
                             f"iterations={iterations}", "--head",
                             "use lam >= 0, neighbours >= 1 and iterations >= 1")
        self.lam, self.neighbours = float(lam), int(neighbours)
        self.rectify, self.iterations = bool(rectify), int(iterations)
        self.probe = bool(probe)
        self.linear: nn.Linear | None = None

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        super().process_support_set(support, support_labels)
        self.linear = (train_linear(self.support_features.detach(), support_labels, STEPS, LR,
                                    TEMPERATURE) if self.probe else None)

    def inductive(self, features: Tensor) -> Tensor:
        """Logits without the graph: the probe's, or scaled SimpleShot's."""
        if self.linear is not None:
            return self.linear(features)
        return -self.temperature / 2 * squared_distances(features, self.prototypes)

    def forward(self, query: Tensor) -> Tensor:
        features = self.query_features(query)
        if self.batch_too_small(features):
            return self.inductive(features)
        features = features.detach()
        if self.linear is not None:
            unary = -self.linear(features)
        else:
            prototypes = (rectified_prototypes(self.support_features, self.support_labels,
                                               self.prototypes, features)
                          if self.rectify else self.prototypes)
            unary = self.temperature / 2 * squared_distances(features, prototypes)
        graph = knn_graph(features, self.neighbours)
        logits = -unary
        assignments = logits.softmax(-1)
        for _ in range(self.iterations):
            logits = -unary + self.lam * graph @ assignments
            updated = logits.softmax(-1)
            converged = (updated - assignments).abs().max() <= TOLERANCE
            assignments = updated
            if converged:
                break
        return logits
