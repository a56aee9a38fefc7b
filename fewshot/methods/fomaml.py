"""First-order MAML: the inner-loop gradients are treated as constants (no second order)."""

from fewshot.methods.base import register_head
from fewshot.methods.gbml import GradientMetaHead


@register_head("fomaml")
class FOMAML(GradientMetaHead):
    """MAML whose meta-gradient is the query gradient at the adapted weights; cheaper in
    time and memory. `first_order` is always on."""

    always_first_order = True
