"""blood-v1 trained again with training seeds 1 and 2 (configs/blood-v1.yaml, nothing else
changed), so that RESULTS.md gives the spread across training seeds beside the episode CI
of the seed-0 rows (rows/blood_rare_rbc.py); paired against raw pixels as those rows are."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import TASK

SEEDS = (1, 2)

register(Group(
    name="training-seeds", task=TASK, tier="cpu",
    stages=[Stage(f"blood-v1-seed{s}", "pretrain", "configs/blood-v1.yaml",
                  sets=[f"train.seed={s}"]) for s in SEEDS],
    note="blood-v1's recipe with other training seeds: how much of a row is the seed",
    reference="pixels 16x16, nearest centroid (reference)",
    seed_of="blood-v1",
    pairs=[Pair(f"blood-v1-seed{s}", head, f"blood-v1 (training seed {s}) + {label}")
           for s in SEEDS
           for head, label in (("simpleshot", "SimpleShot"), ("linear-probe", "linear probe"))]))
