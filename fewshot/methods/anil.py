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

    @property
    def feature_based(self) -> bool:
        """With stored batch-norm statistics (or no batch-norm) each image's features do not
        depend on the rest of the episode, so evaluation, validation and adapt can embed
        every image once, as they do for ProtoNet; with statistics from the support set
        they cannot."""
        return all(layer.has_stored_statistics() for layer in self._bn)
