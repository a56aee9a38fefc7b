"""Rows on tasks/blood-rare-rbc.yaml for what feature-based heads read of the shipped
blood-v1 (model.json `embedding`, chosen on val by experiments/select_embedding.py): layer3
and layer4 pooled and concatenated, averaged over the 8 flips and rotations, against the
encoder's plain output (the same weights, with base statistics of that output), with the
same head on the same episodes."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import PREPARE_OUTPUT, SHIPPED_OUTPUT, TASK

for head, name in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
    register(Group(
        name=f"embedding-{head}", task=TASK, tier="cpu", prepare=PREPARE_OUTPUT,
        reference=f"shipped blood-v1 (output) + {name}",
        note="shipped blood-v1 read as layer3 + layer4, dihedral views (its model.json), "
             "against the same weights read through the encoder's output",
        pairs=[Pair(SHIPPED_OUTPUT, head, f"shipped blood-v1 (output) + {name}"),
               Pair("blood-v1", head, f"shipped blood-v1 + {name}")]))

TRANSDUCTIVE = [("tim", "TIM"), ("tim-probe", "TIM on the linear probe"),
                ("tim:marginal_entropy_weight=1", "TIM, balance weight 1"),
                ("tim-probe:marginal_entropy_weight=1",
                 "TIM on the linear probe, balance weight 1")]
"""The heads' defaults (balance weight 0.1, chosen on val by
experiments/select_transductive.py), then the earlier default (weight 1) on the same
episodes, which shows what the choice was worth on novel."""
BATCH_CENTRED = [("batch-centred-probe", "the linear probe, features centred on the batch")]
"""batch-centred-probe (chosen on val by experiments/select_transductive.py, section
'Re-centred on the batch'); a group of its own so that adding it did not re-score the rows
of TRANSDUCTIVE."""


def transductive_groups(name: str, heads: list[tuple[str, str]], note: str) -> None:
    """Balanced and imbalanced (`-imbalanced`) groups of transductive heads on the shipped
    blood-v1's embedding, each against the linear probe on the same embedding and
    episodes."""
    for imbalance in (None, 2.0):
        suffix = "" if imbalance is None else ", imbalanced queries"
        register(Group(
            name=name + ("" if imbalance is None else "-imbalanced"),
            task=TASK, tier="cpu", query_imbalance=imbalance, note=note,
            reference=f"shipped blood-v1 + linear probe{suffix}",
            pairs=[Pair("blood-v1", "linear-probe", f"shipped blood-v1 + linear probe{suffix}")]
            + [Pair("blood-v1", head, f"shipped blood-v1 + {label} (transductive){suffix}")
               for head, label in heads]))


transductive_groups(
    "embedding-transductive", TRANSDUCTIVE,
    "TIM and tim-probe on the shipped blood-v1's embedding, against the linear probe on the "
    "same embedding and episodes (balance weight 0.1, their default, and 1, the earlier "
    "default)")
transductive_groups(
    "embedding-batch-centred", BATCH_CENTRED,
    "batch-centred-probe on the shipped blood-v1's embedding: features re-centred on the mean "
    "of the support and query images, against the linear probe on the same embedding and "
    "episodes")
