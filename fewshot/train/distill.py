"""Self-distillation in pretraining (born-again networks, Furlanello et al. 2018; the
few-shot recipe of Tian et al. 2020): a student learns the base classes from the labels
and from a finished pretrain run's softened outputs on the same augmented images.

The teacher's base-class layer is not part of its model (the run's model is encoder +
SimpleShot), so it is read from the run's last checkpoint, which holds `classifier.*`.
The last checkpoint is the model only when the run kept its last epoch (no val classes);
otherwise the teacher is that last epoch, which the student's record says.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import DataError, UsageError
from fewshot.models import build_backbone
from fewshot.run import RunDir


def load_teacher(path: str | Path, classes: list[str], device: torch.device,
                 classifier: Callable[[nn.Module, int], nn.Module]) -> nn.Module:
    """The teacher run's encoder and base-class layer (built by `classifier(encoder,
    classes)`, the stage's own model), frozen, in eval mode. Its base classes must be the
    student's, in the same order (the outputs are matched by index)."""
    run = RunDir(Path(path))
    try:  # the newest complete checkpoint, read as --resume reads it
        state, _ = run.load_checkpoint()
    except UsageError:
        raise UsageError("the teacher has no checkpoint (its base-class layer lives only "
                         "there)", run.checkpoint_dir, "set train.distill to a pretrain run "
                         "directory of this machine, not an exported or shipped model"
                         ) from None
    except DataError as damaged:  # the run's own hint (start without --resume) is not ours
        raise DataError(f"the teacher's checkpoint cannot be read ({damaged.what})",
                        damaged.where, "retrain the teacher run, or set train.distill to "
                        "another pretrain run") from None
    meta = run.read_meta()
    if meta.kind != "pretrain" or list(meta.classes.get("base", [])) != list(classes):
        raise UsageError("the teacher was not pretrained on this task's base classes, in "
                         "this order", run.path, "distil from a pretrain run of the same task")
    encoder = build_backbone(meta.backbone, image_size=meta.image_size, **meta.backbone_args)
    teacher = classifier(encoder, len(classes))
    teacher.load_state_dict({k: v for k, v in state.items()
                             if k.startswith(("encoder.", "classifier."))})
    teacher.requires_grad_(False)
    teacher = teacher.to(device).eval()
    return teacher.to(memory_format=torch.channels_last) if device.type == "cuda" else teacher


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, weight: float,
                      temperature: float, label_smoothing: float = 0.0) -> Tensor:
    """(1 - weight) x cross-entropy + weight x T² x KL(teacher || student) at temperature
    T; the T² keeps the soft term's gradients on the hard term's scale."""
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student / temperature, 1),
                    F.log_softmax(teacher / temperature, 1), reduction="batchmean",
                    log_target=True) * temperature ** 2
    return (1 - weight) * hard + weight * soft
