"""blood-v1 trained again as its own student (born-again self-distillation, Tian et al.
2020's few-shot recipe): configs/blood-v1.yaml with the same seed, plus the shipped run's
softened outputs (temperature 4, half the loss), paired against blood-v1 with the same
test-time head. The teacher's forward pass adds about a third to the 49-minute training."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import BLOOD_V1, TASK

DISTILLED = Stage("blood-v1-distill", "pretrain", "configs/blood-v1.yaml",
                  sets=["train.distill=experiments/runs/blood-v1"])

for head, label in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
    register(Group(
        name=f"self-distillation-{head}", task=TASK, tier="cpu", stages=[BLOOD_V1, DISTILLED],
        note="blood-v1's recipe distilled from blood-v1 itself, paired against blood-v1 "
             "with the same head",
        reference=f"blood-v1 + {label}",
        pairs=[Pair("blood-v1-distill", head, f"blood-v1 self-distilled + {label}")]))
