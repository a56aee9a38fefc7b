"""Rows on tasks/blood-rare-rbc.yaml for what feature-based heads read of the shipped
blood-v1 (model.json `embedding`, chosen on val by experiments/select_embedding.py): layer3
and layer4 pooled and concatenated, averaged over the 8 flips and rotations, against the
encoder's plain output (the same weights, with base statistics of that output), with the
same head on the same episodes."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import TASK

OUTPUT = "experiments/runs/blood-v1-output"
"""The shipped weights read through their plain output (layer4 pooled, one view)."""
PREPARE = {OUTPUT: "experiments/refresh_prototypes.py fewshot/resources/models/blood-v1 "
                   "--task tasks/blood-rare-rbc-trainval.yaml --stages --no-dihedral "
                   f"--out {OUTPUT}"}

for head, name in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
    register(Group(
        name=f"embedding-{head}", task=TASK, tier="cpu", prepare=PREPARE,
        reference=f"shipped blood-v1, encoder output + {name}",
        note="shipped blood-v1 read as layer3 + layer4, dihedral views (its model.json), "
             "against the same weights read through the encoder's output",
        pairs=[Pair(OUTPUT, head, f"shipped blood-v1, encoder output + {name}"),
               Pair("blood-v1", head, f"shipped blood-v1 + {name}")]))
