"""TIM (Boudiaf et al., 2020): transductive information maximisation on the query batch.

Starting from the support prototypes (features centred on the base mean when known and
L2-normalised, as for SimpleShot), the prototypes are fitted with `steps` Adam steps to
minimise the support cross-entropy minus the mutual information between the queries and
their predicted labels (the marginal entropy, which keeps classes balanced, minus the
conditional entropy, which makes predictions confident). Logits are scaled cosine
similarities. Full-batch steps from a fixed start: deterministic. Follows easyfsl's `TIM`
(its gradient-descent variant) but with a learning rate of 1e-2, not 1e-4: at 1e-4, 50
steps barely move the prototypes, and 1e-2 scored +0.9 / +1.7 points (1 / 5-shot, paired)
on val (experiments/results/head_selection.md). The marginal (balance) term is weighted 0.1,
not 1: at 1 it pulls an unequal batch towards equal classes (-9.2 points against the linear
probe on val with Dirichlet-split queries), at 0.1 it costs nothing there and keeps the gain
on balanced batches (experiments/results/transductive_selection.md).
`alpha` replaces both Shannon entropies by Tsallis alpha-entropies, `(1 - sum p**a) / (a -
1)` (alpha-TIM, Veilleux et al., 2021): for alpha > 1 the marginal term penalises an
unequal class split less steeply; `None` is the Shannon limit (alpha -> 1). On val,
alpha=2 at balance weight 1 still lost 5 to 8 points on Dirichlet-split batches, against
none at weight 0.1 (transductive_selection.md). With fewer than two queries a class on
average, the support prototypes alone (inductive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import register_head
from fewshot.methods.common import cosine
from fewshot.methods.transductive import TransductivePrototypes


def entropy(probs: Tensor, alpha: float | None) -> Tensor:
    """Shannon entropy of each distribution on the last axis, or its Tsallis alpha-entropy."""
    if alpha is None:
        return -(probs * torch.log(probs + 1e-12)).sum(-1)
    return (1 - probs.pow(alpha).sum(-1)) / (alpha - 1)


def information_loss(query_probs: Tensor, marginal_weight: float, conditional_weight: float,
                     alpha: float | None = None) -> Tensor:
    """Minus TIM's weighted mutual information between the queries and their labels: the
    conditional entropy (confident predictions) minus the marginal one (balanced classes)."""
    return (conditional_weight * entropy(query_probs, alpha).mean()
            - marginal_weight * entropy(query_probs.mean(0), alpha))


def check_alpha(head: str, alpha: float | None) -> None:
    if alpha is not None and alpha <= 1:
        raise UsageError(f"head '{head}' needs alpha above 1, got {alpha}", "alpha",
                         "give alpha=2 (alpha-TIM) or alpha=null (Shannon entropies)")


@register_head("tim")
class TIM(TransductivePrototypes):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 steps: int = 50, lr: float = 1e-2, temperature: float = 10.0,
                 cross_entropy_weight: float = 1.0, marginal_entropy_weight: float = 0.1,
                 conditional_entropy_weight: float = 0.1, power: float | None = None,
                 alpha: float | None = None, base_features: Tensor | None = None) -> None:
        super().__init__(encoder, base_mean, temperature, power, base_features)
        check_alpha("tim", alpha)
        self.steps, self.lr, self.alpha = steps, lr, alpha
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
                loss = ce_weight * cross_entropy + information_loss(
                    query_probs, marginal_weight, conditional_weight, self.alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return prototypes.detach()
