"""Meta-gradients equal learn2learn's MAML / MetaSGD (the reference) in float64.

Same Conv4 with batch-norm, same weights, same tasks; transductive batch-norm, as
learn2learn normalises the query with its own batch statistics. float32 cannot tell
right from wrong here (equivalent orderings differ by ~5e-4), hence float64.
learn2learn is a test dependency built by tests/install_learn2learn.sh.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods import build_head
from fewshot.models.conv4 import Conv4

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    l2l = pytest.importorskip("learn2learn", reason="run tests/install_learn2learn.sh")

WAYS, SHOTS, QUERIES, SIZE, STEPS, LR, BATCH = 3, 2, 3, 28, 2, 0.3, 2


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def reference_grads(algorithm: nn.Module, support, s_labels, query, q_labels) -> torch.Tensor:
    """learn2learn's own example loop: clone, adapt on the support loss, query loss."""
    for b in range(support.shape[0]):
        learner = algorithm.clone()
        for _ in range(STEPS):
            learner.adapt(F.cross_entropy(learner(support[b]), s_labels[b]))
        (F.cross_entropy(learner(query[b]), q_labels[b]) / support.shape[0]).backward()
    return torch.cat([p.grad.flatten() for p in algorithm.parameters()])


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd"])
def test_meta_gradient_equals_learn2learn(name):
    torch.manual_seed(0)
    encoder = Conv4(SIZE, channels=8, track_running_stats=False)
    ours = build_head(name, copy.deepcopy(encoder), ways=WAYS, inner_steps=STEPS,
                      inner_lr=LR, transductive=True)
    model = nn.Sequential(encoder, copy.deepcopy(ours.classifier))
    if name == "metasgd":
        reference = l2l.algorithms.MetaSGD(model, lr=LR)
    else:
        reference = l2l.algorithms.MAML(model, lr=LR, first_order=name == "fomaml")
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(BATCH, WAYS * SHOTS, 3, SIZE, SIZE, generator=gen)
    query = torch.randn(BATCH, WAYS * QUERIES, 3, SIZE, SIZE, generator=gen)
    s_labels = torch.arange(WAYS).repeat_interleave(SHOTS).expand(BATCH, -1)
    q_labels = torch.arange(WAYS).repeat_interleave(QUERIES).expand(BATCH, -1)
    expected = reference_grads(reference, support, s_labels, query, q_labels)

    names = [n for n, _ in ours.named_parameters() if not n.startswith("inner_lrs")]
    if name == "metasgd":  # learn2learn orders its rates as the module's parameters
        names += ["inner_lrs." + n.replace(".", "-") for n in names]
    params = dict(ours.named_parameters())
    for execution in ("loop", "vmap"):
        ours.execution = execution
        ours.zero_grad()
        loss, _ = ours.meta_loss(support, s_labels, query, q_labels)
        loss.backward()
        got = torch.cat([params[n].grad.flatten() for n in names])
        error = float((got - expected).norm() / expected.norm())
        assert error < 1e-8, f"{name} {execution}: relative error {error:.2e}"
