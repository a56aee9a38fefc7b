"""Self-distillation in pretraining: the loss by hand, a student trained from a real
teacher run on disk, and the teachers it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import run_cli, write_tiny_task
from fewshot.config import load_config
from fewshot.errors import DataError, UsageError
from fewshot.train.distill import distillation_loss
from fewshot.train.pretrain import pretrain

TINY = ["model.backbone_args={channels: 8}", "train.batch_size=8", "train.ways=2",
        "train.shots=2", "train.queries=3", "train.val_episodes=5", "train.lr=0.01",
        "tracking.wandb=false"]


def test_distillation_loss_by_hand() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=generator), torch.randn(6, 4,
                                                                         generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    hard = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.0, 4.0), hard)
    # KL(p_teacher || p_student) at T = 2, written out, times T²
    p, q = (teacher / 2).softmax(1), (student / 2).softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean() * 4
    assert torch.allclose(distillation_loss(student, teacher, labels, 1.0, 2.0), kl)
    mixed = distillation_loss(student, teacher, labels, 0.3, 2.0)
    assert torch.allclose(mixed, 0.7 * hard + 0.3 * kl)
    # a student that already matches its teacher pays only for the labels
    assert torch.allclose(distillation_loss(teacher, teacher, labels, 0.5, 4.0),
                          0.5 * F.cross_entropy(teacher, labels), atol=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """(task file, a finished tiny pretrain run) to distil from."""
    root = tmp_path_factory.mktemp("teacher")
    task = write_tiny_task(root)
    config = load_config(None, [f"data.task={task}", *TINY, "train.epochs=2"])
    return task, pretrain(config, out=root / "teacher", quiet=True).path


def first_loss(run: Path) -> float:
    return next(json.loads(line)["train/loss"] for line in
                (run / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line)


def test_student_learns_from_the_teacher_run(teacher, tmp_path: Path) -> None:
    task, teacher_run = teacher
    common = [f"data.task={task}", *TINY, "train.epochs=1", "train.seed=3"]
    plain = pretrain(load_config(None, common), out=tmp_path / "plain", quiet=True).path
    unused = pretrain(load_config(None, [*common, f"train.distill={teacher_run}",
                                         "train.distill_weight=0"]),
                      out=tmp_path / "weight0", quiet=True).path
    soft = pretrain(load_config(None, [*common, f"train.distill={teacher_run}",
                                       "train.distill_weight=1",
                                       "train.distill_temperature=1"]),
                    out=tmp_path / "weight1", quiet=True).path
    # the same first batch and initial weights: weight 0 is the labels' loss alone, weight
    # 1 is the divergence from the teacher, which the labels' loss does not give
    assert first_loss(unused) == pytest.approx(first_loss(plain), rel=1e-5)
    assert first_loss(soft) != pytest.approx(first_loss(plain), rel=1e-3)
    meta = json.loads((soft / "model.json").read_text())
    assert meta["metrics"]["distilled_from"] == str(teacher_run.resolve())
    saved = yaml.safe_load((soft / "config.yaml").read_text())
    assert Path(saved["train"]["distill"]).is_absolute()


def test_teachers_it_refuses(teacher, tmp_path: Path) -> None:
    task, teacher_run = teacher
    bare = tmp_path / "bare"  # a model without its checkpoint (an exported or shipped one)
    shutil.copytree(teacher_run, bare, ignore=shutil.ignore_patterns("checkpoint*"))
    with pytest.raises(UsageError, match="no checkpoint"):
        pretrain(load_config(None, [f"data.task={task}", *TINY, "train.epochs=1",
                                    f"train.distill={bare}"]), out=tmp_path / "s1", quiet=True)
    damaged = tmp_path / "damaged"  # every checkpoint torn: the hint is about the teacher
    shutil.copytree(teacher_run, damaged)
    for state in damaged.glob("checkpoint*/state.pt"):
        state.write_bytes(b"torn")
    with pytest.raises(DataError, match="teacher's checkpoint") as refused:
        pretrain(load_config(None, [f"data.task={task}", *TINY, "train.epochs=1",
                                    f"train.distill={damaged}"]), out=tmp_path / "s3", quiet=True)
    assert "--resume" not in str(refused.value) and "retrain the teacher" in str(refused.value)
    other = yaml.safe_load(task.read_text())  # the same images, other base classes
    other["splits"]["base"] = ["x/c0", "x/c1", "x/c2"]
    other_task = task.with_name("other.yaml")
    other_task.write_text(yaml.safe_dump(other))
    result = run_cli("pretrain", "--set", f"data.task={other_task}", *sum(
        (["--set", s] for s in [*TINY, "train.epochs=1", f"train.distill={teacher_run}"]),
        []), "--out", str(tmp_path / "s2"))
    assert result.returncode == 2, result.stderr
    assert "base classes" in result.stderr and "Traceback" not in result.stderr
