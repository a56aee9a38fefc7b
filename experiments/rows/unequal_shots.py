"""Unequal support sets on tasks/blood-rare-rbc.yaml: each class of an episode draws its
shots between 1 and 5 (`fewshot evaluate --shots 1-5`, seeded per episode; the classes and
queries are those of the 5-shot episodes), against 5 shots a class on the same episodes.
The shipped blood-v1 (read through its plain output) with every feature-based head and
finetune; the linear probe and finetune weigh each class n / (N n_c) (class-balanced);
the linear probe once without the weights."""

from rows import Group, Pair, register
from rows.blood_rare_rbc import PREPARE_OUTPUT, SHIPPED_OUTPUT

TASK = "tasks/blood-rare-rbc.yaml"
FINETUNE_EPISODES = 50
"""finetune re-runs the encoder's last stage (about 5 s a 5-way episode with 75 queries on
the 2-core CPU): the first 50 of the 600 episodes."""

register(Group(
    name="unequal-shots", task=TASK, tier="cpu", shots=(5, "1-5"), prepare=PREPARE_OUTPUT,
    note="unequal shots per class (1-5) against 5 a class, same classes and queries",
    reference="shipped blood-v1 (output) + linear probe",
    pairs=[Pair(SHIPPED_OUTPUT, "linear-probe", "shipped blood-v1 (output) + linear probe"),
           Pair(SHIPPED_OUTPUT, "simpleshot", "shipped blood-v1 (output) + SimpleShot"),
           Pair(SHIPPED_OUTPUT, "protonet", "shipped blood-v1 (output) + protonet"),
           Pair(SHIPPED_OUTPUT, "siamese",
                "shipped blood-v1 (output) + siamese (untrained pair score)"),
           Pair(SHIPPED_OUTPUT, "bd-cspn", "shipped blood-v1 (output) + BD-CSPN"),
           Pair(SHIPPED_OUTPUT, "tim", "shipped blood-v1 (output) + TIM"),
           Pair(SHIPPED_OUTPUT, "tim-probe", "shipped blood-v1 (output) + TIM on the linear probe"),
           Pair(SHIPPED_OUTPUT, "pt-map", "shipped blood-v1 (output) + PT-MAP"),
           Pair(SHIPPED_OUTPUT, "finetune",
                "shipped blood-v1 (output) + finetune (freeze-then-unfreeze)",
                episodes=FINETUNE_EPISODES)]))

register(Group(  # with equal shots every weight is 1: this row only differs at 1-5
    name="unequal-shots-weights", task=TASK, tier="cpu", shots=("1-5",), prepare=PREPARE_OUTPUT,
    note="the class-balanced loss weights dropped (balance=false)",
    reference="shipped blood-v1 (output) + linear probe",
    pairs=[Pair(SHIPPED_OUTPUT, "linear-probe:balance=false",
                "shipped blood-v1 (output) + linear probe, no class weights")]))
