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

import torch.nn.functional as F
from torch import Tensor

from fewshot.methods.base import register_head
from fewshot.methods.common import cosine
from fewshot.methods.transductive import TransductivePrototypes


def rectified_prototypes(support: Tensor, labels: Tensor, prototypes: Tensor,
                         query: Tensor) -> Tensor:
    """Prototypes from the support and the shifted, pseudo-labelled query batch (shared
    with LaplacianShot, which starts from them)."""
    ways = prototypes.shape[0]
    query = query + (support.mean(0, keepdim=True) - query.mean(0, keepdim=True))
    support_hot = F.one_hot(labels, ways).to(support.dtype)
    support_weight = support_hot * cosine(support, prototypes).exp()
    query_scores = cosine(query, prototypes).exp()
    query_hot = F.one_hot(query_scores.argmax(-1), ways).to(query.dtype)
    query_weight = query_hot * query_scores
    total = support_weight.sum(0) + query_weight.sum(0)
    return (support_weight.T @ support + query_weight.T @ query) / total[:, None]


@register_head("bd-cspn")
class BDCSPN(TransductivePrototypes):
    """Options: base_mean, temperature, power (and base_features, offered by the caller)."""

    def refined(self, query: Tensor) -> Tensor:
        return rectified_prototypes(self.support_features, self.support_labels,
                                    self.prototypes, query)
