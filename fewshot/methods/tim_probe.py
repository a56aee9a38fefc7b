"""TIM on the linear probe: the probe's classifier, fitted with TIM's query terms added.

The linear probe (weights started at the prototypes, a bias, `steps` full-batch Adam steps
on the class-balanced support cross-entropy) with TIM's information terms on the query
batch in the same loss: the conditional entropy (confident predictions) minus the marginal
entropy (balanced classes), weighted as in `tim`. TIM itself fits cosine prototypes with no
bias; this head keeps everything the probe learns from the support and only adds the
batch. `marginal_entropy_weight` is 0.1, chosen on val with balanced and Dirichlet-split
query batches (experiments/results/transductive_selection.md): at 1 the batch is pulled
towards equal classes, which costs 7.6 points when it is not; `alpha` gives alpha-TIM's
Tsallis entropies. With fewer than two queries a class on average, it is the linear probe
(inductive). Deterministic, as the probe is.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from fewshot.methods.base import register_head
from fewshot.methods.tim import check_alpha, information_loss
from fewshot.methods.transductive import TransductiveProbe


@register_head("tim-probe")
class TIMProbe(TransductiveProbe):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 steps: int = 100, lr: float = 0.01, temperature: float = 10.0,
                 marginal_entropy_weight: float = 0.1, conditional_entropy_weight: float = 0.1,
                 alpha: float | None = None, power: float | None = None,
                 base_features: Tensor | None = None, balance: bool = True) -> None:
        super().__init__(encoder, base_mean, steps, lr, temperature, power, base_features,
                         balance)
        check_alpha("tim-probe", alpha)
        self.query_loss = partial(information_loss, marginal_weight=marginal_entropy_weight,
                                  conditional_weight=conditional_entropy_weight, alpha=alpha)

    def joint_logits(self, features: Tensor) -> Tensor:
        return self.fit(self.support_features.detach(), features.detach(),
                        self.query_loss)(features)
