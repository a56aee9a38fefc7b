"""MAML (Finn et al., 2017): every parameter adapted per task, second-order meta-gradient."""

from fewshot.methods.base import register_head
from fewshot.methods.gbml import GradientMetaHead


@register_head("maml")
class MAML(GradientMetaHead):
    """Options: ways, feature_dim, inner_steps, inner_lr, first_order, transductive,
    chunk_size, execution (see `GradientMetaHead`)."""
