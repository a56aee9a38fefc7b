"""Rows on tasks/wbc-to-rbc.yaml (cross-domain: trained on the 8 PBC white-cell classes
only, tested on rare red-cell morphologies): the headline rows only."""

from rows import Group, Pair, Stage, register

TASK = "tasks/wbc-to-rbc.yaml"
WBC_V1 = Stage("wbc-v1", "pretrain", "configs/wbc-v1.yaml")

register(Group(
    name="wbc-floors", task=TASK, tier="cpu",
    note="raw pixels: what the cross-domain encoder must beat",
    pairs=[Pair("pixels", "simpleshot", "pixels 16x16, nearest centroid (reference)")]))

register(Group(
    name="wbc-supervised", task=TASK, tier="cpu", stages=[WBC_V1],
    note="blood-v1's recipe on the white-cell classes (configs/wbc-v1.yaml)",
    pairs=[Pair("wbc-v1", "simpleshot", "wbc-v1 + SimpleShot"),
           Pair("wbc-v1", "linear-probe", "wbc-v1 + linear probe")]))
