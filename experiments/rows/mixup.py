"""blood-v1's recipe with mixup (Beta(0.2, 0.2), `train.mixup`), the lever chosen on val
by experiments/select_recipe.py --levers (+1.2 / +1.3 points there over no mixup), trained
on the same 15 classes with the same seed, paired against the shipped blood-v1 (the same
recipe without mixup) with the same head and embedding."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import TASK

MIXUP = Stage("blood-v1-mixup", "pretrain", "configs/blood-v1.yaml", sets=["train.mixup=0.2"])

for head, label in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
    register(Group(
        name=f"mixup-{head}", task=TASK, tier="cpu", stages=[MIXUP],
        note="blood-v1's recipe with mixup 0.2, paired against the shipped blood-v1 "
             "with the same head",
        reference=f"shipped blood-v1 + {label}",
        pairs=[Pair("blood-v1-mixup", head, f"blood-v1 with mixup 0.2 + {label}")]))
