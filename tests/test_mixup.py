"""Mixup in pretraining: seeded draws, the loss it trains on, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write_tiny_task
from fewshot.config import load_config
from fewshot.data.tasks import load_task
from fewshot.errors import UsageError
from fewshot.train.pretrain import PretrainStage, mixup_draw, pretrain

TINY = ["model.backbone_args={channels: 8}", "train.batch_size=8", "train.ways=2",
        "train.shots=2", "train.queries=3", "train.val_episodes=5", "train.lr=0.01",
        "tracking.wandb=false", "train.epochs=1"]


def test_draws_are_seeded_per_step() -> None:
    weight, partner = mixup_draw(0, 1, 2, 16, 0.4)
    again = mixup_draw(0, 1, 2, 16, 0.4)
    assert weight == again[0] and torch.equal(partner, again[1])
    assert 0.0 <= weight <= 1.0 and sorted(partner.tolist()) == list(range(16))
    others = [mixup_draw(0, 1, step, 16, 0.4) for step in range(3, 8)]
    assert any(w != weight for w, _ in others)
    assert any(not torch.equal(p, partner) for _, p in others)


def test_loss_weighs_both_labels(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    config = load_config(None, [f"data.task={task}", *TINY, "train.mixup=0.4"])
    stage = PretrainStage(config, load_task(task), torch.device("cpu"), resuming=False,
                          quiet=True)
    index = torch.tensor([0, 10, 20, 30, 1, 11, 21, 31])  # images of all 4 base classes
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    weight, partner = 0.3, torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    labels = stage.labels[index]
    assert labels.unique().numel() > 1  # the partners' labels differ from the images'
    expected = 0.3 * F.cross_entropy(logits, labels, label_smoothing=0.1) \
        + 0.7 * F.cross_entropy(logits, labels[partner], label_smoothing=0.1)
    got = stage.supervised_loss(logits, torch.zeros(8, 3, 16, 16), index, (weight, partner))
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, stage.supervised_loss(logits, torch.zeros(8, 3, 16, 16),
                                                         index))


def test_a_mixup_run_trains_and_differs(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    plain = pretrain(load_config(None, [f"data.task={task}", *TINY]), out=tmp_path / "plain",
                     quiet=True).path
    mixed = pretrain(load_config(None, [f"data.task={task}", *TINY, "train.mixup=1.0"]),
                     out=tmp_path / "mixed", quiet=True).path
    a = (plain / "model.safetensors").read_bytes()
    assert (mixed / "model.safetensors").read_bytes() != a


def test_mixup_needs_labels(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    config = load_config(None, [f"data.task={task}", *TINY, "train.mixup=0.4",
                                "train.objective=ssl"])
    with pytest.raises(UsageError, match="mixup"):
        pretrain(config, out=tmp_path / "ssl", quiet=True)
