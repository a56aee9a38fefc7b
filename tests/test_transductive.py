"""Transductive heads: bd-cspn, tim and laplacianshot against easyfsl's own implementations
on the same
features and episodes, tim-probe against the linear probe it extends; all labelled
transductive, and falling back to their inductive rule when the query batch is too small
to use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.methods import build_head
from fewshot.methods.common import squared_distances


def episodes(count: int, ways: int = 5, shots: int = 5, queries: int = 15, dim: int = 32,
             seed: int = 0):
    """Gaussian classes around random centres, hard enough that heads differ."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        centres = torch.randn(ways, dim, generator=generator) * 0.6 + 1.0
        support = centres.repeat_interleave(shots, 0) + torch.randn(ways * shots, dim,
                                                                    generator=generator)
        query = centres.repeat_interleave(queries, 0) + torch.randn(ways * queries, dim,
                                                                    generator=generator)
        yield (support, torch.arange(ways).repeat_interleave(shots), query,
               torch.arange(ways).repeat_interleave(queries))


def accuracy(head, count: int = 40, **shape) -> float:
    hits = []
    for support, labels, query, truth in episodes(count, **shape):
        head.process_support_set(support, labels)
        hits.append((head(query).argmax(-1) == truth).float().mean().item())
    return sum(hits) / len(hits)


@pytest.mark.parametrize(("ours", "theirs"), [("bd-cspn", "BDCSPN"), ("tim", "TIM"),
                                             ("laplacianshot", "LaplacianShot")])
def test_matches_easyfsl_on_the_same_features_and_episodes(ours: str, theirs: str) -> None:
    methods = pytest.importorskip("easyfsl.methods")
    base_mean = torch.full((32,), 1.0)
    mine = build_head(ours, nn.Identity(), base_mean=base_mean)
    options = ({"fine_tuning_steps": mine.steps, "fine_tuning_lr": mine.lr,
                "marginal_entropy_weight": mine.weights[1]}
               if ours == "tim" else {})  # our defaults, chosen on val, are not theirs
    if ours == "laplacianshot":
        options = {"knn": mine.neighbours, "lambda_regularization": mine.lam,
                   "inference_steps": mine.iterations}
    reference = getattr(methods, theirs)(nn.Identity(), feature_centering=base_mean,
                                         feature_normalization=2, **options)
    ours_acc, theirs_acc = accuracy(mine), accuracy(reference)
    assert abs(ours_acc - theirs_acc) < 0.01, (ours_acc, theirs_acc)


@pytest.mark.parametrize("name", ["bd-cspn", "tim", "laplacianshot"])
def test_uses_the_query_batch_and_says_so(name: str) -> None:
    head = build_head(name, nn.Identity())
    assert head.transductive and head.protocol == "transductive" and head.feature_based
    simpleshot = build_head("simpleshot", nn.Identity())
    assert accuracy(head, shots=1) > accuracy(simpleshot, shots=1)  # the batch helps here
    support, labels, query, _ = next(episodes(1))
    head.process_support_set(support, labels)
    alone = head(query[:1])
    together = head(query)[:1]
    assert not torch.allclose(alone, together)  # a prediction depends on the batch...
    few = head(query[:3])  # ...unless it is too small: the inductive rule (prototypes)
    if name == "laplacianshot":  # SimpleShot's squared distances, scaled
        expected = -head.temperature / 2 * squared_distances(
            torch.nn.functional.normalize(query[:3]), head.prototypes)
    else:
        expected = (head.temperature * torch.nn.functional.normalize(query[:3])
                    @ torch.nn.functional.normalize(head.prototypes).T)
    assert torch.allclose(few, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["bd-cspn", "tim", "tim-probe", "laplacianshot",
                                  "batch-centred-probe"])
def test_is_deterministic(name: str) -> None:
    first = build_head(name, nn.Identity())
    second = build_head(name, nn.Identity())
    assert accuracy(first, count=5) == accuracy(second, count=5)


def test_imbalanced_queries_are_seeded_class_major_and_recorded(tmp_path) -> None:
    import numpy as np

    from conftest import write_tiny_task
    from fewshot.data.episodes import EpisodeSampler
    from fewshot.evaluate import evaluate

    labels = np.repeat(np.arange(4), 30)
    sampler = EpisodeSampler(labels, 3, 2, 6, seed=1, query_imbalance=0.5)
    first, again = sampler.episode(5), sampler.episode(5)
    assert first.query_counts == again.query_counts and sum(first.query_counts) == 18
    assert min(first.query_counts) >= 1 and len(set(first.query_counts)) > 1
    assert np.array_equal(labels[first.query], first.classes[first.query_labels(6)])
    balanced = EpisodeSampler(labels, 3, 2, 6, seed=1).episode(5)
    assert balanced.query_counts is None and len(balanced.query) == 18

    task = write_tiny_task(tmp_path)
    result = evaluate(["pixels"], ["simpleshot", "tim"], task, ways=2, shots=2, queries=3,
                      episodes=4, query_imbalance=2.0, quiet=True)
    assert result["query_imbalance"] == 2.0 and result["protocol"] == "mixed"


def test_alpha_tim_tends_to_tim_and_refuses_alpha_at_most_one() -> None:
    from fewshot.errors import UsageError
    from fewshot.methods.tim import entropy

    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.4, 0.4]])
    assert torch.allclose(entropy(probs, 1.0001), entropy(probs, None), atol=1e-3)
    assert torch.allclose(entropy(probs, 2.0), 1 - probs.pow(2).sum(-1))
    support, labels, query, _ = next(episodes(1))
    near, shannon = (build_head("tim", nn.Identity(), lr=0.01, alpha=a) for a in (1.0001, None))
    far = build_head("tim", nn.Identity(), lr=0.01, alpha=5.0)
    for head in (near, shannon, far):
        head.process_support_set(support, labels)
    assert torch.allclose(near(query), shannon(query), atol=1e-2)
    assert not torch.allclose(far(query), shannon(query), atol=1e-2)
    with pytest.raises(UsageError, match="alpha above 1"):
        build_head("tim", nn.Identity(), alpha=1.0)


def test_tim_probe_is_the_linear_probe_plus_the_query_batch() -> None:
    from fewshot.errors import UsageError

    base_mean = torch.full((32,), 1.0)
    probe = build_head("linear-probe", nn.Identity(), base_mean=base_mean)
    plain = build_head("tim-probe", nn.Identity(), base_mean=base_mean,
                       marginal_entropy_weight=0, conditional_entropy_weight=0)
    head = build_head("tim-probe", nn.Identity(), base_mean=base_mean)
    assert head.transductive and head.protocol == "transductive" and head.feature_based
    support, labels, query, _ = next(episodes(1, shots=1))
    for h in (probe, plain, head):
        h.process_support_set(support, labels)
    assert torch.allclose(plain(query), probe(query), atol=1e-5)  # no query terms: the probe
    assert not torch.allclose(head(query), probe(query), atol=1e-3)
    assert not torch.allclose(head(query[:1]), head(query)[:1])  # depends on the batch...
    assert torch.allclose(head(query[:3]), probe(query[:3]), atol=1e-5)  # ...unless too small
    fallback = head.inductive  # fitted once per support set, then reused
    assert torch.allclose(head(query[3:5]), probe(query[3:5]), atol=1e-5)
    assert head.inductive is fallback
    head.process_support_set(support, labels)
    assert head.inductive is None
    assert accuracy(head, shots=1) > accuracy(probe, shots=1)  # the batch helps here
    with pytest.raises(UsageError, match="alpha above 1"):
        build_head("tim-probe", nn.Identity(), alpha=0.5)


def test_laplacianshot_without_its_graph_is_scaled_simpleshot() -> None:
    from fewshot.errors import UsageError
    from fewshot.methods.laplacianshot import knn_graph

    support, labels, query, _ = next(episodes(1))
    graph = knn_graph(query, 3)
    assert graph.sum(1).eq(3).all() and graph.diagonal().eq(0).all()
    unit = torch.nn.functional.normalize(query)
    similarity = unit @ unit[0]
    similarity[0] = -float("inf")
    assert graph[0, similarity.argmax()] == 1  # its nearest other query, by cosine
    plain = build_head("laplacianshot", nn.Identity(), lam=0.0, rectify=False)
    simpleshot = build_head("simpleshot", nn.Identity())
    for h in (plain, simpleshot):
        h.process_support_set(support, labels)
    torch.testing.assert_close(plain(query), plain.temperature / 2 * simpleshot(query))
    graph_only = build_head("laplacianshot", nn.Identity(), rectify=False)
    graph_only.process_support_set(support, labels)
    assert not torch.allclose(graph_only(query), plain(query))  # the graph moves them
    with pytest.raises(UsageError, match="neighbours"):
        build_head("laplacianshot", nn.Identity(), neighbours=0)


def test_laplacianshot_on_the_probe_smooths_the_probe() -> None:
    base_mean = torch.full((32,), 1.0)
    support, labels, query, _ = next(episodes(1, shots=1))
    probe = build_head("linear-probe", nn.Identity(), base_mean=base_mean)
    flat = build_head("laplacianshot", nn.Identity(), base_mean=base_mean, probe=True, lam=0.0)
    smoothed = build_head("laplacianshot", nn.Identity(), base_mean=base_mean, probe=True)
    for h in (probe, flat, smoothed):
        h.process_support_set(support, labels)
    torch.testing.assert_close(flat(query), probe(query))  # no graph: the probe's logits
    assert not torch.allclose(smoothed(query), probe(query))
    torch.testing.assert_close(smoothed(query[:3]), probe(query[:3]))  # too few: the probe


def test_batch_centred_probe_is_the_probe_on_features_centred_on_the_batch() -> None:
    import torch.nn.functional as F

    from fewshot.methods.linear_probe import train_linear

    base_mean = torch.full((32,), 1.0)
    head = build_head("batch-centred-probe", nn.Identity(), base_mean=base_mean)
    probe = build_head("linear-probe", nn.Identity(), base_mean=base_mean)
    assert head.transductive and head.protocol == "transductive" and head.feature_based
    support, labels, query, _ = next(episodes(1, shots=1))
    for h in (head, probe):
        h.process_support_set(support, labels)
    # by hand: the usual transform, then centred on the whole batch's mean and normalised
    joint = F.normalize(torch.cat([support, query]) - base_mean, dim=-1)
    joint = F.normalize(joint - joint.mean(0), dim=-1)
    expected = train_linear(joint[:len(support)], labels, head.steps, head.lr,
                            head.temperature)(joint[len(support):])
    assert torch.allclose(head(query), expected, atol=1e-5)
    assert not torch.allclose(head(query[:1]), head(query)[:1])  # depends on the batch...
    assert torch.allclose(head(query[:3]), probe(query[:3]), atol=1e-5)  # ...unless too small
    fallback = head.inductive  # fitted once per support set, then reused
    assert torch.allclose(head(query[3:5]), probe(query[3:5]), atol=1e-5)
    assert head.inductive is fallback


def test_centring_on_the_batch_removes_an_offset_the_base_mean_misses() -> None:
    """New classes that share an offset from the base mean: after L2 normalisation the
    offset dominates every cosine, unless the batch's own mean removes it."""
    offset = torch.zeros(32)
    offset[0] = 20.0

    def accuracy_of(head) -> float:
        hits = []
        for support, labels, query, truth in episodes(30, shots=1, seed=5):
            head.process_support_set(support + offset, labels)
            hits.append((head(query + offset).argmax(-1) == truth).float().mean().item())
        return sum(hits) / len(hits)

    base_mean = torch.full((32,), 1.0)  # right for the base classes, not for these
    centred = accuracy_of(build_head("batch-centred-probe", nn.Identity(), base_mean=base_mean))
    plain = accuracy_of(build_head("linear-probe", nn.Identity(), base_mean=base_mean))
    assert centred > plain + 0.03, (centred, plain)
