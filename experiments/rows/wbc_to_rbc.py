"""Rows on tasks/wbc-to-rbc.yaml (cross-domain: trained on the 8 PBC white-cell classes
only, tested on rare red-cell morphologies): the headline rows (pixels, blood-v1's recipe,
meta-transfer from it)."""

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

WBC_CURRENT = Stage("wbc-v1-current-recipe", "pretrain", "configs/wbc-v1.yaml",
                    sets=["train.label_smoothing=0",
                          "model.embedding={stages: [layer3, layer4], dihedral: true}"])
"""wbc-v1 with the two changes blood-v1's recipe made since (plain cross-entropy; heads
read layer3 + layer4 over the 8 flips and rotations): the headline row 'blood-v1's recipe
+ linear probe' on this task, paired against raw pixels."""

register(Group(
    name="wbc-current-recipe", task=TASK, tier="cpu", stages=[WBC_CURRENT],
    note="blood-v1's current recipe on the white-cell classes (configs/wbc-v1.yaml with "
         "label smoothing 0 and blood-v1's embedding)",
    pairs=[Pair(WBC_CURRENT.name, "simpleshot", "wbc-v1, blood-v1's current recipe + SimpleShot"),
           Pair(WBC_CURRENT.name, "linear-probe",
                "wbc-v1, blood-v1's current recipe + linear probe")]))

WBC_SECOND = Stage("wbc-v1-second", "pretrain", "configs/wbc-v1.yaml")
"""wbc-v1's recipe trained a second time for the meta-transfer rows: every other wbc-v1 row
is of one earlier training whose weights are not kept, and training is not bit-for-bit
repeatable, so retraining `wbc-v1` itself would leave them scored on other weights."""
SECOND = "wbc-v1, second training"
WBC_METABASELINE = Stage("wbc-v1-metabaseline", "meta-train", "configs/wbc-v1-metabaseline.yaml",
                         sets=[f"model.weights=experiments/runs/{WBC_SECOND.name}"])
WBC_METABASELINE_LAST = Stage("wbc-v1-metabaseline-last", "meta-train",
                              "configs/wbc-v1-metabaseline.yaml",
                              sets=[*WBC_METABASELINE.sets, "train.keep=last"])
"""The same recipe on its whole 800-episode budget, keeping the last weights: what the
meta-training itself does to the encoder, where the early-stopped run kept its start."""
META_TRANSFER = [
    (WBC_METABASELINE_LAST, "-last", "Meta-Baseline, 800 episodes, last weights",
     "Meta-Baseline from wbc-v1 on its whole budget (800 white-cell episodes, "
     "train.keep=last: no early stopping)"),
    (WBC_METABASELINE, "", "Meta-Baseline (early stopping kept its starting weights)",
     "Meta-Baseline from wbc-v1 (configs/wbc-v1-metabaseline.yaml: white-cell "
     "episodes, stopped early on the red-cell val classes)")]
"""The fixed-budget run and the early-stopped one, each paired against wbc-v1's second
training with the same test-time head."""
for stage, suffix, what, trained in META_TRANSFER:
    for head, label in (("linear-probe", "linear probe"), ("simpleshot", "SimpleShot")):
        reference = Pair(WBC_SECOND.name, head, f"{SECOND} + {label}")
        register(Group(
            name=f"meta-transfer-wbc-{head}{suffix}", task=TASK, tier="cpu",
            stages=[WBC_SECOND, stage],
            note=f"{trained}, paired against the same encoder without meta-training, with "
                 "the same test-time head",
            reference=reference.label,
            pairs=[reference, Pair(stage.name, head, f"{SECOND} + {what} + {label}")]))
