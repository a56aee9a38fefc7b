"""Siamese verification on tasks/blood-rare-rbc.yaml: the shipped blood-v1 meta-trained on
episode pairs (configs/blood-v1-siamese.yaml, 400 episodes) beside ProtoNet meta-trained
from the same encoder with the same recipe and budget (Meta-Baseline's cosine ProtoNet,
400 episodes), each model also scored with the other's head, and blood-v1 itself with
both heads (the siamese head untrained is a scaled cosine to each support image)."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import PREPARE_OUTPUT, SHIPPED_OUTPUT

TASK = "tasks/blood-rare-rbc.yaml"
SIAMESE = Stage("siamese-from-shipped", "meta-train", "configs/blood-v1-siamese.yaml")
PROTONET = Stage("protonet-output-from-shipped-400", "meta-train",
                 "configs/blood-v1-metabaseline.yaml",
                 sets=["model.weights=blood-v1", "train.episodes=400",
                       "model.embedding={stages: [], dihedral: false}"])
"""Meta-Baseline's recipe on the encoder's plain output, which the siamese head reads too,
so that the two differ in the head alone."""

register(Group(
    name="siamese", task=TASK, tier="cpu", stages=[SIAMESE, PROTONET], prepare=PREPARE_OUTPUT,
    note="pair verification (siamese head) beside ProtoNet, same start, recipe and budget",
    reference="shipped blood-v1 + ProtoNet meta-trained + protonet",
    pairs=[Pair(PROTONET.name, "protonet",
                "shipped blood-v1 + ProtoNet meta-trained + protonet"),
           Pair("siamese-from-shipped", "siamese",
                "shipped blood-v1 + siamese meta-trained + siamese"),
           Pair("siamese-from-shipped", "protonet:distance=cosine",
                "shipped blood-v1 + siamese meta-trained + protonet (cosine)"),
           Pair("siamese-from-shipped", "linear-probe",
                "shipped blood-v1 + siamese meta-trained + linear probe"),
           Pair(PROTONET.name, "linear-probe",
                "shipped blood-v1 + ProtoNet meta-trained + linear probe"),
           Pair(SHIPPED_OUTPUT, "protonet:distance=cosine",
                "shipped blood-v1 (output) + protonet (cosine)"),
           Pair(SHIPPED_OUTPUT, "siamese",
                "shipped blood-v1 (output) + siamese (untrained pair score)")]))
