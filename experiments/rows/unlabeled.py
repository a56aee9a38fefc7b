"""Rows on tasks/wbc-to-rbc.yaml that use unlabeled red-cell images: test-time alignment
(`evaluate --unlabeled`: batch-norm statistics and the centring mean re-estimated on the
unlabeled stream) of the white-cell encoder wbc-v1, each paired against the same head on
the same encoder without it (the rows of wbc-supervised: run the two groups together), and
the MMD-aligned linear probe (`linear-probe:mmd_weight`) against the plain probe and against
the aligned one."""

from rows import Group, Pair, register
from rows.wbc_to_rbc import TASK, WBC_CURRENT, WBC_V1

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

MMD_WEIGHT = 0.3
"""The least harmful `linear-probe:mmd_weight` on val (experiments/select_heads.py,
head_selection.md): no weight tried there beat the aligned probe without it."""
MMD_PROBE = f"linear-probe:mmd_weight={MMD_WEIGHT:g}"
for name, reference in (("unlabeled-adapt-mmd-probe", "wbc-v1 + linear probe"),
                        ("unlabeled-adapt-mmd-term",
                         "wbc-v1 + linear probe, aligned to unlabeled red cells")):
    against = "the plain probe" if name.endswith("probe") else "the aligned probe"
    register(Group(
        name=name, task=TASK, tier="cpu", stages=[WBC_V1], prepare=PREPARE,
        reference=reference,
        note=f"aligned, then the probe fitted with an MMD term to the unlabeled red cells, "
             f"against {against}",
        pairs=[Pair("wbc-v1", MMD_PROBE, f"wbc-v1 + MMD-aligned linear probe ({against} as "
                    "reference)", unlabeled=[STREAM])]))

def current_group(name: str, label: str, note: str, pairs: list[Pair]) -> None:
    """A group on wbc-v1 trained with blood-v1's current recipe, referenced to the same
    head without alignment (run with wbc-current-recipe)."""
    register(Group(name=name, task=TASK, tier="cpu", stages=[WBC_CURRENT], prepare=PREPARE,
                   reference=f"wbc-v1, blood-v1's current recipe + {label}",
                   note=f"{note} (run with wbc-current-recipe)", pairs=pairs))


for head, name in (("simpleshot", "SimpleShot"), ("linear-probe", "linear probe")):
    row = f"wbc-v1, blood-v1's current recipe + {name}"
    current_group(
        f"unlabeled-adapt-current-{head}", name,
        "test-time alignment to the same unlabeled red cells, on wbc-v1 trained with "
        "blood-v1's current recipe",
        [Pair(WBC_CURRENT.name, head, f"{row}, aligned to unlabeled red cells",
              unlabeled=[STREAM])])
    current_group(
        f"unlabeled-adapt-centre-only-{head}", name,
        "the same alignment without re-estimating batch-norm statistics "
        "(`--keep-batchnorm`): only the centring mean moves to the unlabeled red cells",
        [Pair(WBC_CURRENT.name, head, f"{row}, re-centred on unlabeled red cells "
              "(batch-norm kept)", unlabeled=[STREAM], keep_batchnorm=True)])
    current_group(
        f"unlabeled-adapt-whiten-{head}", name,
        "re-centred on the unlabeled red cells and whitened with their covariance "
        "(`--whiten`, its shrinkage chosen on val: "
        "experiments/results/whitening_selection.md), with the trained batch-norm "
        "statistics (`--keep-batchnorm`) and with re-estimated ones",
        [Pair(WBC_CURRENT.name, head, f"{row}, re-centred on and whitened with unlabeled "
              "red cells (batch-norm kept)", unlabeled=[STREAM], keep_batchnorm=True,
              whiten=True),
         Pair(WBC_CURRENT.name, head, f"{row}, aligned to and whitened with unlabeled red "
              "cells", unlabeled=[STREAM], whiten=True)])
