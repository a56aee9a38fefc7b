"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate per parameter entry.

The rates start at `inner_lr` and are meta-trained with the weights (`inner_lrs` in the
state dict, one tensor per adapted parameter).
"""

from fewshot.methods.base import register_head
from fewshot.methods.gbml import GradientMetaHead


@register_head("metasgd")
class MetaSGD(GradientMetaHead):
    learns_inner_lrs = True
