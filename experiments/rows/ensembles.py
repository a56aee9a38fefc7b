"""Ensembles on tasks/blood-rare-rbc.yaml: the mean of two encoders' probabilities
(`fewshot evaluate --ensemble`), paired against each encoder alone on the same episodes.

The two best encoders measured: the shipped blood-v1 (fp16) and Meta-Baseline
meta-trained from it; and, for the cost of no training at all, two heads on blood-v1."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import SHIPPED_METABASELINE

TASK = "tasks/blood-rare-rbc.yaml"

BLOOD_LP = Pair("blood-v1", "linear-probe", "shipped blood-v1 + linear probe")
BLOOD_SS = Pair("blood-v1", "simpleshot", "shipped blood-v1 + SimpleShot")
META_LP = Pair(SHIPPED_METABASELINE.name, "linear-probe",
               "shipped blood-v1 + Meta-Baseline + linear probe")

register(Group(
    name="ensembles", task=TASK, tier="cpu", stages=[SHIPPED_METABASELINE],
    note="the mean of two pairs' softmax probabilities, paired against each pair alone",
    reference=BLOOD_LP.label,
    pairs=[BLOOD_LP, BLOOD_SS, META_LP,
           Pair("ensemble", "mean", "ensemble: blood-v1 LP + Meta-Baseline LP",
                members=[BLOOD_LP, META_LP]),
           Pair("ensemble", "mean", "ensemble: blood-v1 LP + blood-v1 SimpleShot",
                members=[BLOOD_LP, BLOOD_SS])]))
