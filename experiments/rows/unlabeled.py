"""Rows on tasks/wbc-to-rbc.yaml that use unlabeled red-cell images: test-time alignment
(`evaluate --unlabeled`: batch-norm statistics and the centring mean re-estimated on the
unlabeled stream) of the white-cell encoder wbc-v1, each paired against the same head on
the same encoder without it (the rows of wbc-supervised: run the two groups together)."""

from rows import Group, Pair, register
from rows.wbc_to_rbc import TASK, WBC_V1

STREAM = "experiments/runs/unlabeled-rbc"
"""Chula classes neither val nor novel, less near-duplicates of val/novel images
(experiments/unlabeled_rbc.py)."""
PREPARE = {STREAM: "experiments/unlabeled_rbc.py"}

for head, name in (("simpleshot", "SimpleShot"), ("linear-probe", "linear probe")):
    register(Group(
        name=f"unlabeled-adapt-{head}", task=TASK, tier="cpu", stages=[WBC_V1],
        prepare=PREPARE, reference=f"wbc-v1 + {name}",
        note="test-time alignment to 2,287 unlabeled red-cell images",
        pairs=[Pair("wbc-v1", head, f"wbc-v1 + {name}, aligned to unlabeled red cells",
                    unlabeled=[STREAM])]))
