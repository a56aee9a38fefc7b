"""TIM (Boudiaf et al., 2020): transductive information maximisation on the query batch.

Starting from the support prototypes (features centred on the base mean when known and
L2-normalised, as for SimpleShot), the prototypes are fitted with `steps` Adam steps to
minimise the support cross-entropy minus the mutual information between the queries and
their predicted labels (the marginal entropy, which keeps classes balanced, minus the
conditional entropy, which makes predictions confident). Logits are scaled cosine
similarities. Full-batch steps from a fixed start: deterministic. Follows easyfsl's `TIM`
(its gradient-descent variant); its balance term assumes roughly balanced queries. With
fewer than two queries a class on average, the support prototypes alone (inductive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.base import register_head
from fewshot.methods.common import cosine
from fewshot.methods.transductive import TransductivePrototypes


@register_head("tim")
class TIM(TransductivePrototypes):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 steps: int = 50, lr: float = 1e-4, temperature: float = 10.0,
                 cross_entropy_weight: float = 1.0, marginal_entropy_weight: float = 1.0,
                 conditional_entropy_weight: float = 0.1, power: float | None = None,
                 base_features: Tensor | None = None) -> None:
        super().__init__(encoder, base_mean, temperature, power, base_features)
        self.steps, self.lr = steps, lr
        self.weights = (cross_entropy_weight, marginal_entropy_weight,
                        conditional_entropy_weight)

    def refined(self, query: Tensor) -> Tensor:
        """The prototypes after `steps` Adam steps on the TIM loss."""
        ce_weight, marginal_weight, conditional_weight = self.weights
        prototypes = self.prototypes.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([prototypes], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                support_logits = self.temperature * cosine(self.support_features, prototypes)
                query_probs = (self.temperature * cosine(query, prototypes)).softmax(-1)
                cross_entropy = F.cross_entropy(support_logits, self.support_labels)
                conditional = -(query_probs * torch.log(query_probs + 1e-12)).sum(-1).mean()
                marginal = query_probs.mean(0)
                marginal_entropy = -(marginal * torch.log(marginal + 1e-12)).sum()
                loss = ce_weight * cross_entropy - (marginal_weight * marginal_entropy
                                                    - conditional_weight * conditional)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return prototypes.detach()
