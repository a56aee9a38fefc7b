"""Transductive heads (they use the unlabeled query batch), on both tasks, with balanced
queries and with queries split by a Dirichlet draw (alpha 2), each paired against the
linear probe on the same encoder and episodes (the reference chosen in advance)."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import BLOOD_V1
from rows.blood_rare_rbc import TASK as BLOOD_TASK
from rows.wbc_to_rbc import TASK as WBC_TASK
from rows.wbc_to_rbc import WBC_V1

HEADS = [("bd-cspn", "BD-CSPN"), ("tim", "TIM"), ("pt-map", "PT-MAP")]

for task, stage in ((BLOOD_TASK, BLOOD_V1), (WBC_TASK, WBC_V1)):
    model = stage.name
    for imbalance in (None, 2.0):
        suffix = "" if imbalance is None else ", imbalanced queries"
        reference = Pair(model, "linear-probe", f"{model} + linear probe{suffix}")
        register(Group(
            name="transductive" + ("" if imbalance is None else "-imbalanced")
                 + ("" if task == BLOOD_TASK else "-wbc"),
            task=task, tier="cpu", stages=[stage], query_imbalance=imbalance,
            note="heads that use the unlabeled query batch, against the linear probe",
            reference=reference.label,
            pairs=([] if imbalance is None else [reference])
            + [Pair(model, head, f"{model} + {label} (transductive){suffix}")
               for head, label in HEADS]))
