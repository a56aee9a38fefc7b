"""BD-CSPN (Liu et al., 2020): prototypes rectified with the query batch (transductive).

Two steps on features centred on the base mean (when known) and L2-normalised, as for
SimpleShot: the query batch is shifted by the support-query mean difference (the
"cross-class bias"), then each prototype is re-estimated as a weighted mean of its support
features and of the queries predicted to be of its class, weighted by their exponentiated
cosine similarity to it (the "intra-class bias"). Logits are scaled cosine similarities to
the rectified prototypes. Deterministic; follows easyfsl's `BDCSPN`. With fewer than two
queries a class on average, the support prototypes alone (inductive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import MIN_QUERIES_PER_CLASS, class_means, cosine
from fewshot.methods.simpleshot import centre_normalise


@register_head("bd-cspn")
class BDCSPN(FewShotHead):
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

    def rectified(self, query: Tensor) -> Tensor:
        """Prototypes from the support and the shifted, pseudo-labelled query batch."""
        support, ways = self.support_features, self.prototypes.shape[0]
        query = query + (support.mean(0, keepdim=True) - query.mean(0, keepdim=True))
        support_hot = F.one_hot(self.support_labels, ways).to(support.dtype)
        support_weight = support_hot * cosine(support, self.prototypes).exp()
        query_scores = cosine(query, self.prototypes).exp()
        query_hot = F.one_hot(query_scores.argmax(-1), ways).to(query.dtype)
        query_weight = query_hot * query_scores
        total = support_weight.sum(0) + query_weight.sum(0)
        return (support_weight.T @ support + query_weight.T @ query) / total[:, None]

    def forward(self, query: Tensor) -> Tensor:
        features = centre_normalise(self.encoder(query), self.base_mean)
        if len(features) < MIN_QUERIES_PER_CLASS * self.prototypes.shape[0]:
            return self.temperature * cosine(features, self.prototypes)  # too few to use
        return self.temperature * cosine(features, self.rectified(features))
