"""Ensembles on tasks/blood-rare-rbc.yaml: the mean of two encoders' probabilities
(`fewshot evaluate --ensemble`), paired against each encoder alone on the same episodes.

The two best encoders measured: the shipped blood-v1 (fp16) and Meta-Baseline
meta-trained from it; and, for the cost of no training at all, two heads on blood-v1."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import PREPARE_OUTPUT, SHIPPED_OUTPUT

TASK = "tasks/blood-rare-rbc.yaml"
META_BASELINE = Stage("metabaseline-from-shipped", "meta-train",
                      "configs/blood-v1-metabaseline.yaml", sets=["model.weights=blood-v1"])
"""configs/blood-v1-metabaseline.yaml started from the shipped blood-v1, so that this group
needs no blood-v1 training run of its own."""

BLOOD_LP = Pair(SHIPPED_OUTPUT, "linear-probe", "shipped blood-v1 (output) + linear probe")
BLOOD_SS = Pair(SHIPPED_OUTPUT, "simpleshot", "shipped blood-v1 (output) + SimpleShot")
META_LP = Pair("metabaseline-from-shipped", "linear-probe",
               "shipped blood-v1 + Meta-Baseline + linear probe")

register(Group(
    name="ensembles", task=TASK, tier="cpu", stages=[META_BASELINE], prepare=PREPARE_OUTPUT,
    note="the mean of two pairs' softmax probabilities, paired against each pair alone",
    reference=BLOOD_LP.label,
    pairs=[BLOOD_LP, BLOOD_SS, META_LP,
           Pair("ensemble", "mean", "ensemble: blood-v1 LP + Meta-Baseline LP",
                members=[BLOOD_LP, META_LP]),
           Pair("ensemble", "mean", "ensemble: blood-v1 LP + blood-v1 SimpleShot",
                members=[BLOOD_LP, BLOOD_SS])]))
