"""The linear probe on features re-centred and whitened with the episode's own images.

A transductive feature transform rather than a transductive loss. The support set and the
query batch together are a sample of the new domain: their mean and covariance say where
its images lie and which directions its variation stretches. The head takes the features
as every feature-based head has them (power, base centring, L2 normalisation), centres
them on that sample's mean, whitens them with its covariance shrunk towards the identity
(`common.whitening_matrix`, ZCA), normalises again, and fits the linear probe on the
support part. It is what `--unlabeled DIR --whiten` does with a folder of unlabeled
images, done with the batch to classify, so it needs no such folder.

Every image of the batch counts once in the mean and the covariance, and nothing pulls the
predicted class split towards equal classes (TIM's marginal term does), which is why an
unequal batch costs it less. `shrinkage` (added to every eigenvalue as a fraction of
their mean) and `whiten` (false: re-centre only) were chosen on val
(experiments/results/transductive_selection.md). With fewer than two queries a class on
average, it is the plain linear probe (inductive). Deterministic, as the probe is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import register_head
from fewshot.methods.common import whitening_matrix
from fewshot.methods.linear_probe import LR, STEPS, TEMPERATURE, train_linear
from fewshot.methods.transductive import TransductivePrototypes

SHRINKAGE = 1.0
"""The default `shrinkage` (chosen on val; see the module docstring)."""


def task_transform(support: Tensor, query: Tensor, whiten: bool, shrinkage: float
                   ) -> tuple[Tensor, Tensor]:
    """Support and query features centred on their joint mean, whitened with their joint
    covariance (when `whiten`) and L2-normalised."""
    joint = torch.cat([support, query])
    centred = joint - joint.mean(0)
    if whiten:
        centred = centred @ whitening_matrix(centred, shrinkage).to(centred)
    out = F.normalize(centred, dim=-1)
    return out[:len(support)], out[len(support):]


@register_head("whitened-probe")
class WhitenedProbe(TransductivePrototypes):
    def __init__(self, encoder: nn.Module, base_mean: Tensor | None = None,
                 steps: int = STEPS, lr: float = LR, temperature: float = TEMPERATURE,
                 shrinkage: float = SHRINKAGE, whiten: bool = True,
                 power: float | None = None, base_features: Tensor | None = None,
                 balance: bool = True) -> None:
        super().__init__(encoder, base_mean, temperature, power, base_features)
        if shrinkage <= 0:
            raise UsageError(f"whitened-probe: shrinkage={shrinkage}", "--head",
                             "use a shrinkage above 0 (the default is "
                             f"{SHRINKAGE}), or whiten=false to re-centre only")
        self.steps, self.lr, self.balance = steps, lr, balance
        self.shrinkage, self.whiten = float(shrinkage), bool(whiten)
        self.inductive: nn.Linear | None = None
        """The plain probe for batches too small to use, fitted once per support set (and
        kept in an adapted folder when adapt needed it)."""

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        super().process_support_set(support, support_labels)
        self.inductive = None  # fitted when first needed

    def fit(self, support: Tensor) -> nn.Linear:
        return train_linear(support, self.support_labels, self.steps, self.lr,
                            self.temperature, balance=self.balance)

    def forward(self, query: Tensor) -> Tensor:
        features = self.query_features(query)
        if not self.batch_too_small(features):
            support, batch = task_transform(self.support_features.detach(), features.detach(),
                                            self.whiten, self.shrinkage)
            return self.fit(support)(batch)
        if self.inductive is None:  # too few to use: the plain probe
            self.inductive = self.fit(self.support_features.detach())
        return self.inductive(features)
