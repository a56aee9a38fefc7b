"""Rows at 10 and 20 shots on blood-rare-rbc for the inductive feature-based heads, so that
experiments/plot_shots.py can draw accuracy against shots (1, 5, 10, 20) from
RESULTS.json; paired against raw pixels at the same shots."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import BLOOD_V1, META_BASELINE, TASK

register(Group(
    name="shots", task=TASK, tier="cpu", stages=[BLOOD_V1, META_BASELINE], shots=(10, 20),
    note="more shots a class, for the accuracy-against-shots plot",
    pairs=[Pair("pixels", "simpleshot", "pixels 16x16, nearest centroid (reference)"),
           Pair("blood-v1", "simpleshot", "blood-v1 + SimpleShot"),
           Pair("blood-v1", "linear-probe", "blood-v1 + linear probe"),
           Pair("blood-v1", "linear-probe:power=0.5", "blood-v1 + linear probe, power 0.5"),
           Pair("blood-v1-metabaseline", "simpleshot",
                "blood-v1 + Meta-Baseline + SimpleShot"),
           Pair("blood-v1-metabaseline", "linear-probe",
                "blood-v1 + Meta-Baseline + linear probe")]))
