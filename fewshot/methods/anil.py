"""ANIL (Raghu et al., 2020): the inner loop adapts the final linear classifier only.

The practical MAML on a large pretrained encoder: the encoder runs once per task and is
still meta-trained through the outer loop. Encoders with stored batch-norm statistics
(pretrained, `track_running_stats=True`) use them, and they are never updated here.
"""

from fewshot.methods.base import register_head
from fewshot.methods.gbml import GradientMetaHead


@register_head("anil")
class ANIL(GradientMetaHead):
    adapts_encoder = False
