"""Rows on tasks/blood-rare-rbc.yaml (5 rare Chula morphologies, source-image groups kept
apart): the floors, and the supervised encoder that ships as blood-v1 with test-time heads."""

from rows import Group, Pair, Stage, register

TASK = "tasks/blood-rare-rbc.yaml"
BLOOD_V1 = Stage("blood-v1", "pretrain", "configs/blood-v1.yaml")

register(Group(
    name="floors", task=TASK, tier="cpu",
    note="what a learned encoder must beat: raw pixels and a random initialisation",
    pairs=[Pair("pixels", "simpleshot", "pixels 16x16, nearest centroid (reference)"),
           Pair("random:resnet18", "simpleshot", "ResNet-18 random init + SimpleShot"),
           Pair("random:resnet18", "linear-probe", "ResNet-18 random init + linear probe")]))

register(Group(
    name="supervised", task=TASK, tier="cpu", stages=[BLOOD_V1],
    note="blood-v1: ResNet-18 supervised on the 15 non-novel classes (configs/blood-v1.yaml)",
    pairs=[Pair("blood-v1", "simpleshot", "blood-v1 + SimpleShot"),
           Pair("blood-v1", "linear-probe", "blood-v1 + linear probe"),
           Pair("blood-v1", "finetune", "blood-v1 + finetune (freeze-then-unfreeze)",
                episodes=30)]))

register(Group(
    name="transductive", task=TASK, tier="cpu", stages=[BLOOD_V1],
    note="heads that use the unlabeled query batch, paired against the linear probe on the "
         "same encoder (balanced queries)",
    reference="blood-v1 + linear probe",
    pairs=[Pair("blood-v1", "bd-cspn", "blood-v1 + BD-CSPN (transductive)"),
           Pair("blood-v1", "tim", "blood-v1 + TIM (transductive)")]))
