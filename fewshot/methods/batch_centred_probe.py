"""The linear probe on features re-centred on the episode's own images.

A transductive feature transform rather than a transductive loss. The support set and the
query batch together are a sample of the images being classified, and their mean says
where those images lie: an encoder's features of a new set of classes share a common
offset from the base classes' mean that carries no class information. The head takes the
features as every feature-based head has them (power, base centring, L2 normalisation),
centres them on the joint mean of the support and the batch, normalises again, and fits
the linear probe on the support part.

Every image of the batch counts once in the mean and nothing pulls the predicted class
split towards equal classes (TIM's marginal term does), so an unequal batch moves the
centre a little and the decision not at all. Whitening with the batch's covariance as
well (what `--unlabeled --whiten` does with a folder of unlabeled images) was tried on
val and lost 5 to 27 points at 1-shot: a batch of a few dozen images is mostly its own
classes' differences, and whitening flattens exactly those
(experiments/results/transductive_selection.md). With fewer than two queries a class on
average, it is the plain linear probe (inductive). Deterministic, as the probe is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods.base import register_head
from fewshot.methods.linear_probe import LR, STEPS, TEMPERATURE
from fewshot.methods.transductive import TransductiveProbe


def batch_centred(support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query features centred on their joint mean and L2-normalised."""
    joint = torch.cat([support, query])
    out = F.normalize(joint - joint.mean(0), dim=-1)
    return out[:len(support)], out[len(support):]


@register_head("batch-centred-probe")
class BatchCentredProbe(TransductiveProbe):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 steps: int = STEPS, lr: float = LR, temperature: float = TEMPERATURE,
                 power: float | None = None, base_features: Tensor | None = None,
                 balance: bool = True) -> None:
        super().__init__(encoder, base_mean, steps, lr, temperature, power, base_features,
                         balance)

    def joint_logits(self, features: Tensor) -> Tensor:
        support, batch = batch_centred(self.support_features.detach(), features.detach())
        return self.fit(support)(batch)
