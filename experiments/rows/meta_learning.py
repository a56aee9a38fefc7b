"""Episodic meta-learning on blood-rare-rbc, the rows the field compares with: ProtoNet and
MAML trained from scratch (Conv4), and ProtoNet, ANIL and P>M>F started
from a supervised ResNet-18 trained on the 10 base classes alone
(configs/pretrain-resnet18-blood.yaml: Adam, val-selected), each meta-transfer row paired
against that encoder without meta-training, with the nearest test-time head. These stages
take hours on the 2-core CPU (Conv4 ProtoNet about 80 min, MAML about 65 min for 300
training tasks in meta-batches of 4), so each is trained and scored in its own sitting
(`--only GROUP`)."""

from rows import Group, Pair, Stage, register
from rows.blood_rare_rbc import FINETUNE_EPISODES, TASK

PIXELS = "pixels 16x16, nearest centroid (reference)"
SLOW_EPISODES = 100
"""MAML-family heads that re-run the encoder for every inner step: the first 100 episodes."""
PRETRAINED = Stage("pretrain-resnet18-blood", "pretrain", "configs/pretrain-resnet18-blood.yaml")
START = "model.weights=experiments/runs/pretrain-resnet18-blood"
ENCODER = "ResNet-18 on the 10 base classes"

register(Group(
    name="meta-from-scratch", task=TASK, tier="cpu", reference=PIXELS,
    stages=[Stage("protonet-conv4", "meta-train", "configs/protonet-conv4.yaml"),
            Stage("maml-conv4", "meta-train", "configs/maml-conv4.yaml",
                  sets=["train.episodes=300"])],
    note="episodic training from random weights, the classic few-shot baselines",
    pairs=[Pair("protonet-conv4", "protonet", "ProtoNet from scratch (Conv4)"),
           Pair("maml-conv4", "maml", "MAML from scratch (Conv4)", episodes=SLOW_EPISODES)]))

register(Group(
    name="pretrained-base", task=TASK, tier="cpu", reference=PIXELS, stages=[PRETRAINED],
    note="the encoder the episodic meta-transfer rows start from",
    pairs=[Pair("pretrain-resnet18-blood", "simpleshot", f"{ENCODER} + SimpleShot"),
           Pair("pretrain-resnet18-blood", "linear-probe", f"{ENCODER} + linear probe"),
           Pair("pretrain-resnet18-blood", "finetune",
                f"{ENCODER} + finetune (freeze-then-unfreeze)", episodes=FINETUNE_EPISODES)]))

PRETRAINED_LAST = Stage("pretrain-resnet18-blood-last", "pretrain",
                        "configs/pretrain-resnet18-blood.yaml", sets=["train.keep=last"])
"""The same recipe on all its 16 epochs, keeping the last: what val's choice of epoch costs."""
for head, label in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
    register(Group(
        name=f"pretrained-base-last-{head}", task=TASK, tier="cpu",
        stages=[PRETRAINED, PRETRAINED_LAST], reference=f"{ENCODER} + {label}",
        note="the same encoder trained on its whole budget and kept at its last epoch, "
             "against the val-selected epoch, with the same head",
        pairs=[Pair(PRETRAINED.name, head, f"{ENCODER} + {label}"),
               Pair(PRETRAINED_LAST.name, head,
                    f"{ENCODER}, 16 epochs, last weights + {label}")]))

PROTONET = Stage("protonet-resnet18-pretrained", "meta-train",
                 "configs/protonet-resnet18-pretrained.yaml", sets=[START])
for name, stage, head, label, reference, episodes in (
        ("protonet", PROTONET, "protonet", "ProtoNet", "SimpleShot", None),
        ("pmf", PROTONET, "finetune", "ProtoNet + finetune (P>M>F)",
         "finetune (freeze-then-unfreeze)", FINETUNE_EPISODES),
        ("anil", Stage("anil-resnet18-pretrained", "meta-train",
                       "configs/anil-resnet18-pretrained.yaml", sets=[START]),
         "anil", "ANIL", "linear probe", None)):
    register(Group(
        name=f"meta-transfer-episodic-{name}", task=TASK, tier="cpu",
        stages=[PRETRAINED, stage], reference=f"{ENCODER} + {reference}",
        note=f"{label} meta-trained from {ENCODER}, paired against the encoder without "
             "meta-training",
        pairs=[Pair(stage.name, head, f"{ENCODER} + {label}", episodes=episodes)]))

PROTONET_LAST = Stage("protonet-resnet18-pretrained-last", "meta-train",
                      "configs/protonet-resnet18-pretrained.yaml",
                      sets=[START, "train.keep=last"])
"""ProtoNet on its whole 500-episode budget, keeping the last weights: val (two white cells
and three red-cell morphologies) stopped the run above at its start, as it stops the
pretraining early, so this measures what the episodes themselves are worth."""
for head, label, reference in (("protonet", "ProtoNet", "SimpleShot"),
                               ("linear-probe", "linear probe", "linear probe")):
    register(Group(
        name=f"meta-transfer-episodic-protonet-last-{head}", task=TASK, tier="cpu",
        stages=[PRETRAINED, PROTONET_LAST], reference=f"{ENCODER} + {reference}",
        note=f"ProtoNet meta-trained from {ENCODER} on all 500 episodes (train.keep=last), "
             f"scored with {label}, paired against the encoder without meta-training",
        pairs=[Pair(PROTONET_LAST.name, head,
                    f"{ENCODER} + ProtoNet, 500 episodes, last weights"
                    + ("" if head == "protonet" else f" + {label}"))]))
