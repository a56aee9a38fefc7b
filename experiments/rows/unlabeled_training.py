"""Rows on tasks/wbc-to-rbc.yaml for learning from unlabeled red-cell images while
pretraining on the white-cell classes (train.align mmd / dann, train.objective both),
each against the same recipe without them, all on one wall-clock budget: blood-v1's
recipe for one epoch of the 17,092 base images; a step with an unlabeled batch costs
about twice as much (three times with SimCLR's two views), so those runs see half (a
third) of the base images; SimCLR or BYOL alone sees half an epoch's worth of the white and
red cells as unlabeled images. Each stage names its SSL method, whatever the default.
Their measured training minutes are in the rows."""

from rows import Group, Pair, Stage, register
from rows.unlabeled import PREPARE
from rows.wbc_to_rbc import TASK

STREAM = "data.unlabeled=[../experiments/runs/unlabeled-rbc]"  # relative to configs/
BASE = ["train.epochs=1"]
EPOCH = 17092

STAGES = {
    "wbc-1ep": Stage("wbc-1ep", "pretrain", "configs/wbc-v1.yaml", BASE),
    "wbc-1ep-mmd": Stage("wbc-1ep-mmd", "pretrain", "configs/wbc-v1.yaml",
                         BASE + [f"train.epoch_size={EPOCH // 2}", "train.align=mmd", STREAM]),
    "wbc-1ep-dann": Stage("wbc-1ep-dann", "pretrain", "configs/wbc-v1.yaml",
                          BASE + [f"train.epoch_size={EPOCH // 2}", "train.align=dann",
                                  STREAM]),
    "wbc-1ep-simclr": Stage("wbc-1ep-simclr", "pretrain", "configs/wbc-v1.yaml",
                            BASE + [f"train.epoch_size={EPOCH // 3}", "train.objective=both",
                                    "train.ssl=simclr", STREAM]),
    "wbc-1ep-byol": Stage("wbc-1ep-byol", "pretrain", "configs/wbc-v1.yaml",
                          BASE + [f"train.epoch_size={EPOCH // 3}", "train.objective=both",
                                  "train.ssl=byol", STREAM]),
    # no labels at all: the white cells and the unlabeled red cells, two views a step
    "wbc-1ep-ssl": Stage("wbc-1ep-ssl", "pretrain", "configs/wbc-v1.yaml",
                         BASE + [f"train.epoch_size={EPOCH // 2}", "train.objective=ssl",
                                 "train.ssl=simclr",
                                 "data.unlabeled=[../../shared/data/pbc-blood-wbc, "
                                 "../experiments/runs/unlabeled-rbc]"]),
    "wbc-1ep-ssl-byol": Stage("wbc-1ep-ssl-byol", "pretrain", "configs/wbc-v1.yaml",
                              BASE + [f"train.epoch_size={EPOCH // 2}", "train.objective=ssl",
                                      "train.ssl=byol",
                                      "data.unlabeled=[../../shared/data/pbc-blood-wbc, "
                                      "../experiments/runs/unlabeled-rbc]"]),
}
LABELS = {"wbc-1ep": "one epoch's budget, supervised",
          "wbc-1ep-mmd": "same budget, + MMD alignment to unlabeled red cells",
          "wbc-1ep-dann": "same budget, + DANN alignment to unlabeled red cells",
          "wbc-1ep-simclr": "same budget, + SimCLR on unlabeled red cells",
          "wbc-1ep-byol": "same budget, + BYOL on unlabeled red cells",
          "wbc-1ep-ssl": "same budget, SimCLR alone on white and red cells, no labels",
          "wbc-1ep-ssl-byol": "same budget, BYOL alone on white and red cells, no labels"}

register(Group(
    name="unlabeled-training", task=TASK, tier="cpu", stages=list(STAGES.values()),
    prepare=PREPARE, reference=f"{LABELS['wbc-1ep']} + linear probe",
    note="alignment and self-supervision with the unlabeled red-cell stream while "
         "pretraining on white cells",
    pairs=[Pair(name, "linear-probe", f"{LABELS[name]} + linear probe") for name in STAGES]))

# The default SSL method, chosen by measurement: BYOL against SimCLR on the same episodes
# (the same stages and rows as above, paired against each other; run with that group).
for byol, simclr, what in (("wbc-1ep-ssl-byol", "wbc-1ep-ssl", "alone (`ssl`)"),
                           ("wbc-1ep-byol", "wbc-1ep-simclr", "added to supervised (`both`)")):
    register(Group(
        name=f"ssl-method-{simclr.removeprefix('wbc-1ep-')}", task=TASK, tier="cpu",
        stages=[STAGES[byol], STAGES[simclr]], prepare=PREPARE,
        reference=f"{LABELS[simclr]} + linear probe",
        note=f"BYOL against SimCLR, {what}, for the default of train.ssl",
        pairs=[Pair(byol, "linear-probe", f"BYOL {what} against SimCLR {what} + linear probe")]))
