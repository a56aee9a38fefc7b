"""Transductive heads (they use the unlabeled query batch), on both tasks, with balanced
queries and with queries split by a Dirichlet draw (alpha 2), each paired against the
linear probe on the same encoder and episodes (the reference chosen in advance).

On blood-rare-rbc the encoder is the shipped blood-v1 (its weights are in the package)
read through its plain output (rows/blood_rare_rbc.py: SHIPPED_OUTPUT), so these rows need
no 43-minute training run of their own; on wbc-to-rbc it is the wbc-v1
stage, and (groups transductive-current-wbc*) wbc-v1 trained with blood-v1's current
recipe, with TIM and tim-probe only: the other heads lost to the probe on every encoder.
LaplacianShot came later: its rows are a group of their own (with the same reference on
the same episodes), so adding it did not re-score the others."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import PREPARE_OUTPUT, SHIPPED_OUTPUT
from rows.blood_rare_rbc import TASK as BLOOD_TASK
from rows.embedding import TRANSDUCTIVE
from rows.wbc_to_rbc import TASK as WBC_TASK
from rows.wbc_to_rbc import WBC_CURRENT, WBC_V1

HEADS = [("bd-cspn", "BD-CSPN"), ("tim", "TIM"), ("tim-probe", "TIM on the linear probe"),
         ("pt-map", "PT-MAP")]
LATER = {"-laplacianshot": [("laplacianshot", "LaplacianShot"),
                            ("laplacianshot:rectify=false",
                             "LaplacianShot, prototypes unrectified"),
                            ("laplacianshot:probe=true", "LaplacianShot on the linear probe")]}

for task, model, stages, name in ((BLOOD_TASK, SHIPPED_OUTPUT, [], "shipped blood-v1 (output)"),
                                  (WBC_TASK, WBC_V1.name, [WBC_V1], WBC_V1.name)):
    for imbalance in (None, 2.0):
        suffix = "" if imbalance is None else ", imbalanced queries"
        reference = Pair(model, "linear-probe", f"{name} + linear probe{suffix}")
        for extra, heads in {"": HEADS, **LATER}.items():
            register(Group(
                name="transductive" + extra + ("" if imbalance is None else "-imbalanced")
                     + ("" if task == BLOOD_TASK else "-wbc"),
                task=task, tier="cpu", stages=stages, query_imbalance=imbalance,
                prepare=PREPARE_OUTPUT if task == BLOOD_TASK else {},
                note="heads that use the unlabeled query batch, against the linear probe",
                reference=reference.label,
                pairs=[reference] + [Pair(model, head,
                                          f"{name} + {label} (transductive){suffix}")
                                     for head, label in heads]))

CURRENT = "wbc-v1, blood-v1's current recipe"
for imbalance in (None, 2.0):
    suffix = "" if imbalance is None else ", imbalanced queries"
    register(Group(
        name="transductive-current-wbc" + ("" if imbalance is None else "-imbalanced"),
        task=WBC_TASK, tier="cpu", stages=[WBC_CURRENT], query_imbalance=imbalance,
        note="TIM and tim-probe on wbc-v1 trained with blood-v1's current recipe (run with "
             "wbc-current-recipe), at their default balance weight (0.1) and at 1, against "
             "the linear probe on the same encoder and episodes",
        reference=f"{CURRENT} + linear probe{suffix}",
        pairs=[Pair(WBC_CURRENT.name, "linear-probe", f"{CURRENT} + linear probe{suffix}")]
        + [Pair(WBC_CURRENT.name, head, f"{CURRENT} + {label} (transductive){suffix}")
           for head, label in TRANSDUCTIVE]))
