"""The MAML-family heads: adaptation, gradient flow, execution paths, batch-norm."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods import build_head
from fewshot.models.conv4 import Conv4
from fewshot.models.norm import BatchStatisticsNorm, ExactBatchNorm2d

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 3, 16


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tasks(batch: int, seed: int = 0, separable: bool = False):
    """A meta-batch of random tasks, class-major; `separable` tints each class."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    s_labels = torch.arange(WAYS).repeat_interleave(SHOTS).expand(batch, -1)
    q_labels = torch.arange(WAYS).repeat_interleave(QUERIES).expand(batch, -1)
    support = torch.randn(batch, WAYS * SHOTS, 3, SIZE, SIZE, generator=gen, dtype=dtype)
    query = torch.randn(batch, WAYS * QUERIES, 3, SIZE, SIZE, generator=gen, dtype=dtype)
    if separable:
        tint = 3 * torch.eye(3, dtype=dtype)[:WAYS]  # class c is bright in channel c
        support = support + tint[s_labels][..., None, None]
        query = query + tint[q_labels][..., None, None]
    return support, s_labels, query, q_labels


def head(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    encoder = Conv4(SIZE, channels=4, track_running_stats=False)
    options = {"ways": WAYS, "inner_steps": 2, "inner_lr": 0.2, **options}
    return build_head(name, encoder, **options)


def meta_grad(model, batch, **kwargs) -> torch.Tensor:
    model.zero_grad()
    loss, _ = model.meta_loss(*batch, **kwargs)
    if loss.requires_grad:
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())  # both plain gradients, no graph


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_vmap_path_equals_loop_path(name, float64):
    model, batch = head(name), tasks(3)
    model.execution = "loop"
    loop = meta_grad(model, batch)
    model.execution, model.chunk_size = "vmap", 2  # chunks of 2 and 1 tasks
    chunked = meta_grad(model, batch)
    assert rel(chunked, loop) < 1e-10
    model.execution = "loop"
    assert rel(meta_grad(model, batch, backward=True), loop) < 1e-10


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd"])
def test_adaptation_lowers_the_query_loss_on_a_separable_task(name):
    model = head(name, inner_steps=5, inner_lr=0.5)
    support, s_labels, query, q_labels = (t[0] for t in tasks(1, separable=True))
    model.inner_steps = 0
    model.process_support_set(support, s_labels)
    before = F.cross_entropy(model(query), q_labels)
    model.inner_steps = 5
    model.process_support_set(support, s_labels)
    after = F.cross_entropy(model(query), q_labels)
    assert after < 0.8 * before


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_support_loss_before_and_after_the_inner_loop(name):
    model = head(name, inner_steps=5, inner_lr=0.5)
    batch = tasks(2, separable=True)
    model.meta_loss(*batch)
    before, after = model.support_losses.tolist()
    # Before adaptation: the plain classifier on the unadapted encoder, mean over tasks.
    with torch.no_grad():
        expected = []
        for support, labels in zip(batch[0], batch[1], strict=True):
            model.inner_steps = 0
            model.process_support_set(support, labels)
            expected.append(F.cross_entropy(model(support), labels))
    assert before == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    assert after < 0.8 * before


def test_maml_differentiates_through_the_inner_loop_and_fomaml_does_not(float64):
    batch = tasks(1)
    maml, fomaml = head("maml"), head("fomaml")
    fomaml.load_state_dict(maml.state_dict())
    second, first = meta_grad(maml, batch), meta_grad(fomaml, batch)

    # First order: the meta-gradient is the query gradient at the adapted weights.
    support, s_labels, query, q_labels = (t[0] for t in batch)
    with torch.no_grad():
        fomaml.process_support_set(support, s_labels)
    fast = {k: v.detach().requires_grad_() for k, v in fomaml._fast.items()}
    fomaml._fast = fast
    F.cross_entropy(fomaml(query), q_labels).backward()
    at_adapted = torch.cat([fast[n].grad.flatten() for n, _ in fomaml.named_parameters()])
    assert rel(first, at_adapted) < 1e-10
    # Second order differs from it by the terms through the inner loop ...
    assert rel(second, first) > 1e-3
    # ... and is the true derivative of the post-adaptation loss (central differences).
    direction = torch.randn(second.numel(), generator=torch.Generator().manual_seed(1))
    direction /= direction.norm()  # small unit steps: ReLU and max-pool kinks stay away
    params = list(maml.parameters())
    base = [p.detach().clone() for p in params]

    def loss_at(step: float) -> float:
        offset = 0
        with torch.no_grad():
            for p, b in zip(params, base, strict=True):
                p.copy_(b + step * direction[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            return float(maml.meta_loss(*batch)[0])

    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(numeric - float(second @ direction)) < 1e-6 * abs(numeric)


def test_batchnorm_under_vmap_matches_finite_differences(float64):
    """The known trap: nn.BatchNorm2d under vmap gets the second-order gradient wrong."""
    model, batch = head("maml", transductive=True), tasks(2)
    model.execution = "vmap"
    g = meta_grad(model, batch)
    conv_bias = model.encoder.features[0][0].bias.grad  # feeds batch-norm: true gradient 0
    assert conv_bias.abs().max() < 1e-12 * g.norm()
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        direction = torch.randn(g.numel(), generator=gen)
        direction /= direction.norm()
        values = []
        for step in (1e-6, -1e-6):
            offset = 0
            with torch.no_grad():
                for p, b in zip(params, base, strict=True):
                    p.copy_(b + step * direction[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
                values.append(float(model.meta_loss(*batch)[0]))
        numeric = (values[0] - values[1]) / 2e-6
        assert abs(numeric - float(g @ direction)) < 1e-6 * abs(numeric)


def test_batch_statistics_norm_first_and_second_derivatives(float64):
    """The written-out backward against numerical derivatives, through all three outputs
    (the returned statistics carry gradient to the query in inductive mode)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, generator=gen, requires_grad=True)
    weight = torch.randn(1, 3, 1, 1, generator=gen, requires_grad=True)
    bias = torch.randn(1, 3, 1, 1, generator=gen, requires_grad=True)
    probe = [torch.randn(4, 3, 5, 5, generator=gen), torch.randn(1, 3, 1, 1, generator=gen),
             torch.randn(1, 3, 1, 1, generator=gen)]

    def f(x, weight, bias):
        out, mean, invstd = BatchStatisticsNorm.apply(x, weight, bias, 1e-5)
        return (out * probe[0]).sum() + (mean * probe[1]).sum() + (invstd * probe[2]).sum()

    assert torch.autograd.gradcheck(f, (x, weight, bias))
    assert torch.autograd.gradgradcheck(f, (x, weight, bias))
    out, mean, invstd = BatchStatisticsNorm.apply(x, weight, bias, 1e-5)
    reference = F.batch_norm(x, None, None, weight.flatten(), bias.flatten(), True, 0.0, 1e-5)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(invstd.flatten(), x.var((0, 2, 3), correction=0).add(1e-5).rsqrt())

    def half(t):  # a 2-image batch, for vmap over two of them
        out, mean, invstd = BatchStatisticsNorm.apply(t, weight.detach(), bias.detach(), 1e-5)
        return (out * probe[0][:2]).sum() + (mean * probe[1]).sum() + (invstd * probe[2]).sum()

    halves = x.detach().view(2, 2, 3, 5, 5)
    hessian = torch.func.jacrev(torch.func.jacrev(half))  # reverse over reverse, as MAML
    batched = torch.func.vmap(hessian)(halves)
    for i in range(2):
        torch.testing.assert_close(batched[i], torch.autograd.functional.hessian(half, halves[i]))


def test_anil_adapts_the_classifier_only():
    model = head("anil")
    encoder_before = copy.deepcopy(model.encoder.state_dict())
    support, s_labels, query, q_labels = (t[0] for t in tasks(1, separable=True))
    model.process_support_set(support, s_labels)
    assert set(model._fast) == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(model._fast["classifier.weight"], model.classifier.weight)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    # The encoder is still meta-trained through the outer loop.
    model.meta_loss(*tasks(1))[0].backward()
    assert model.encoder.features[1][0].weight.grad.abs().sum() > 0


def test_stored_batchnorm_statistics_are_used_and_kept():
    """A pretrained encoder (track_running_stats=True, updated) normalises with its stored
    statistics, in training and evaluation alike, and the engine never changes them."""
    torch.manual_seed(0)
    encoder = Conv4(SIZE, channels=4)  # track_running_stats=True
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.randn(8, 3, SIZE, SIZE) * 2 + 1)
    stats = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    encoder.eval()
    support, s_labels, query, _ = (t[0] for t in tasks(1))
    expected = encoder(query)
    model = build_head("anil", encoder, ways=WAYS, inner_steps=1)
    assert isinstance(model.encoder.features[0][1], ExactBatchNorm2d)
    model.train()
    model.process_support_set(support, s_labels)
    torch.testing.assert_close(model(query),
                               F.linear(expected, model._fast["classifier.weight"],
                                        model._fast["classifier.bias"]))
    for key, value in stats.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_anil_on_stored_statistics_runs_on_features_like_protonet():
    """ANIL with a pretrained encoder embeds each image once (evaluation's fast path):
    fed those features with an identity encoder, it gives the logits it gives on images."""
    torch.manual_seed(0)
    encoder = Conv4(SIZE, channels=4)
    with torch.no_grad():
        encoder(torch.randn(8, 3, SIZE, SIZE))  # stored statistics, as after pretraining
    encoder.eval()
    model = build_head("anil", encoder, ways=WAYS, inner_steps=3, inner_lr=0.5)
    assert model.feature_based
    assert not head("anil").feature_based  # statistics from the support set
    support, s_labels, query, _ = (t[0] for t in tasks(1, separable=True))
    model.process_support_set(support, s_labels)
    on_images = model(query)
    with torch.no_grad():
        s_feat, q_feat = encoder(support), encoder(query)
    model.encoder = nn.Identity()
    with torch.no_grad():  # as evaluate calls feature-based heads
        model.process_support_set(s_feat, s_labels)
        on_features = model(q_feat)
    torch.testing.assert_close(on_features, on_images)


def test_inductive_query_uses_support_statistics_only():
    """Inductive: a query image's logits do not depend on the other query images."""
    model = head("maml")
    support, s_labels, query, _ = (t[0] for t in tasks(1))
    model.process_support_set(support, s_labels)
    full = model(query)
    single = model(query[:1])
    torch.testing.assert_close(full[:1], single)
    model.transductive = True
    assert not torch.allclose(model(query)[:1], model(query[:1]))


def test_exact_batchnorm_keeps_state_dict_and_plain_behaviour():
    torch.manual_seed(0)
    plain = Conv4(SIZE, channels=4)
    keys = list(plain.state_dict())
    reference = copy.deepcopy(plain)
    model = build_head("maml", plain, ways=WAYS)
    assert [k[len("encoder."):] for k in model.state_dict() if k.startswith("encoder.")] == keys
    x = torch.randn(5, 3, SIZE, SIZE)
    torch.testing.assert_close(model.encoder(x), reference(x))  # train mode: batch stats
    torch.testing.assert_close(model.encoder.state_dict()["features.0.1.running_mean"],
                               reference.state_dict()["features.0.1.running_mean"])


def test_metasgd_learns_its_inner_learning_rates():
    model = head("metasgd")
    meta_grad(model, tasks(2))
    lrs = list(model.inner_lrs.values())
    assert len(lrs) == len(list(model.encoder.parameters())) + 2
    assert all(lr.grad is not None for lr in lrs)
    assert model.inner_lrs["classifier-weight"].grad.abs().sum() > 0


def test_listed_first_order_default_is_what_the_head_does():
    from fewshot.methods import head_class

    assert head_class("fomaml").options()["first_order"].default is True
    assert head_class("maml").options()["first_order"].default is False
    assert head("maml").first_order is False


def test_episode_interface_and_errors():
    model = head("fomaml")
    assert model.first_order  # always, whatever the option says
    support, s_labels, query, q_labels = (t[0] for t in tasks(1))
    loss, logits = model.episode_loss(support, s_labels, query, q_labels)
    assert logits.shape == (WAYS * QUERIES, WAYS) and loss.requires_grad
    from fewshot.errors import UsageError

    with pytest.raises(UsageError):
        model.process_support_set(support, s_labels + WAYS)  # more ways than the head
    with pytest.raises(UsageError):
        build_head("maml", nn.Conv2d(3, 3, 3), ways=WAYS)  # no feature_dim to infer


MALLOC_PROBE = textwrap.dedent("""
    import ctypes, sys
    from fewshot.runtime import keep_freed_memory
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                    "keepcost".split()]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    applied = keep_freed_memory()
    block = libc.malloc(256 << 20)
    print(applied, libc.mallinfo2().hblkhd >= (256 << 20))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting")
@pytest.mark.parametrize("env,expected", [({}, "True False"),
                                          ({"FEWSHOT_MALLOC": "system"}, "False True")])
def test_keep_freed_memory_keeps_large_blocks_off_mmap(env, expected, monkeypatch):
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == expected.split()
