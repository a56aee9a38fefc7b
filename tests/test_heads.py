"""Heads: hand-computed ProtoNet logits, separable tasks, unequal shots, finetune."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.methods import build_head, select_options
from fewshot.models import build_backbone, last_stage_parameters

FEATURE_HEADS = ["protonet", "simpleshot", "linear-probe"]


def separable(shots: list[int], queries: int = 10, dim: int = 16, seed: int = 0):
    """Gaussian clusters far apart: any sound head gets every query right."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(shots), dim, generator=generator) * 6

    def draw(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
        return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels

    return (*draw(shots), *draw([queries] * len(shots)))


def test_protonet_logits_are_negative_squared_distances() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    head = build_head("protonet", nn.Identity())
    head.process_support_set(support, labels)
    # prototypes (1, 0) and (0, 3)
    expected = -torch.tensor([[0.0 + 1.0, 1.0 + 4.0], [1.0 + 4.0, 0.0 + 1.0]])
    assert torch.allclose(head(query), expected)


def test_protonet_cosine_has_learned_temperature() -> None:
    head = build_head("protonet", nn.Identity(), distance="cosine", temperature=5.0)
    head.process_support_set(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    logits = head(torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(logits, torch.tensor([[5.0, 0.0]]), atol=1e-5)
    logits.sum().backward()
    assert head.log_temperature.grad is not None


@pytest.mark.parametrize("name", FEATURE_HEADS)
@pytest.mark.parametrize("shots", [[5, 5, 5, 5, 5], [1, 4, 2, 7, 3]])
def test_separable_task_is_solved(name: str, shots: list[int]) -> None:
    support, support_labels, query, query_labels = separable(shots)
    head = build_head(name, nn.Identity(), **select_options(name, {"base_mean": torch.zeros(16)}))
    with torch.no_grad():
        head.process_support_set(support, support_labels)
        logits = head(query)
    assert logits.shape == (len(query), len(shots))
    assert (logits.argmax(1) == query_labels).all()


def test_unequal_shots_give_true_class_means() -> None:
    support = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    head = build_head("protonet", nn.Identity())
    head.process_support_set(support, torch.tensor([0, 0, 0, 1]))
    assert torch.allclose(head.prototypes, torch.tensor([[1.0], [10.0]]))


def test_simpleshot_centres_on_base_mean() -> None:
    # Without centring both queries sit nearest class 0; centring on the base mean
    # (5, 5) separates the two directions.
    support = torch.tensor([[6.0, 5.0], [5.0, 6.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[7.0, 5.0], [5.0, 7.0]])
    head = build_head("simpleshot", nn.Identity(), base_mean=torch.tensor([5.0, 5.0]))
    head.process_support_set(support, labels)
    assert head(query).argmax(1).tolist() == [0, 1]


def test_linear_probe_is_deterministic() -> None:
    support, labels, query, _ = separable([3, 1, 2], dim=8, seed=3)
    outputs = []
    for _ in range(2):
        head = build_head("linear-probe", nn.Identity(), steps=20, seed=1)
        head.process_support_set(support, labels)
        outputs.append(head(query))
    assert torch.equal(outputs[0], outputs[1])


def test_finetune_trains_last_stage_and_restores_it() -> None:
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16).eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head = build_head("finetune", encoder, steps=5, finetune_steps=3, finetune_lr=0.01,
                      augment=False)
    assert head.feature_based is False
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # unequal shots
    head.process_support_set(images, labels)
    after_first = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert head(images).shape == (6, 3)
    changed = [k for k in before if not torch.equal(before[k], after_first[k])]
    assert changed and all(k.startswith("features.3.") for k in changed)
    # A second episode starts again from the pretrained weights, so (without
    # augmentation) it ends where the first did, not further along.
    head.process_support_set(images, labels)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, after_first[key])


@pytest.mark.parametrize(("backbone", "args"), [("conv4", {}), ("resnet12", {}),
                                                 ("resnet18", {}),
                                                 ("resnet18", {"maxpool": False})])
def test_an_encoder_split_at_its_last_stage_computes_the_same(backbone, args) -> None:
    from fewshot.models.registry import split_last_stage

    torch.manual_seed(0)
    encoder = build_backbone(backbone, image_size=32, **args).eval()
    trunk, tail = split_last_stage(encoder)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(images)), encoder(images), atol=1e-5)
    tail_params = {id(p) for p in tail.parameters()}
    assert {id(p) for p in last_stage_parameters(encoder)} <= tail_params
    assert not tail_params & {id(p) for p in trunk.parameters()}


def test_fast_finetune_trains_the_last_stage_on_flips_and_rotations() -> None:
    from fewshot.models.embedding import dihedral

    views = dihedral(torch.arange(4.0).view(1, 1, 2, 2))
    assert views.shape == (8, 1, 1, 2, 2) and len({tuple(v.flatten().tolist()) for v in views}) == 8
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = []
    for fast in (True, True, False):
        torch.manual_seed(0)
        encoder = build_backbone("conv4", image_size=16).eval()
        head = build_head("finetune", encoder, steps=5, finetune_steps=4, finetune_lr=0.01,
                          fast=fast, seed=3)
        before = [p.clone() for p in last_stage_parameters(encoder)]
        head.process_support_set(images, labels)
        assert any(not torch.equal(a, b) for a, b in
                   zip(before, last_stage_parameters(encoder), strict=True))
        outputs.append(head(images))
    assert torch.equal(outputs[0], outputs[1])  # seeded: the same views, the same model
    assert not torch.equal(outputs[0], outputs[2])  # the slow path draws its own augmentation
