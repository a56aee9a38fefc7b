"""The siamese head: a learned same-finding score on pairs, meta-trained on episode pairs,
used as a few-shot classifier, and behind `fewshot verify`'s probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_meta_train import config_for

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.data.episodes import EpisodeSampler
from fewshot.methods import build_head
from fewshot.metrics import episode_metrics


class Features(torch.nn.Identity):
    """An identity encoder on precomputed features, with the size a head asks for."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.feature_dim = dim


def test_untrained_pair_score_is_a_scaled_cosine() -> None:
    head = build_head("siamese", Features(8), scale=10.0)
    a, b = torch.randn(5, 8), torch.randn(7, 8)
    cosine = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    assert torch.allclose(head.pair_logits(F.normalize(a, dim=-1), F.normalize(b, dim=-1)),
                          10 * (2 * cosine - 2) + 10, atol=1e-4)
    # as a classifier: the mean pair logit against each class's support images
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    head.process_support_set(b, labels)
    assert torch.allclose(head.class_average.sum(0), torch.ones(3))
    logits = head(a)
    expected = torch.stack([(10 * (2 * cosine - 2) + 10)[:, labels == c].mean(1)
                            for c in range(3)], 1)
    assert torch.allclose(logits, expected, atol=1e-4)
    same = head.same_probability(a[:1], a[:1])
    assert float(same) == pytest.approx(float(torch.sigmoid(torch.tensor(10.0))), abs=1e-5)


def test_pair_training_learns_which_dimensions_tell_findings_apart() -> None:
    """4 informative dimensions among 60 loud noisy ones: trained on episode pairs, the
    head weighs the informative ones up, and classifies and verifies better than cosine."""
    rng = np.random.default_rng(0)
    classes, per_class, dim = 10, 30, 64
    centres = rng.normal(0, 1, (classes, 4))
    x = np.concatenate([np.concatenate([centres[c] + rng.normal(0, 0.3, (per_class, 4)),
                                        rng.normal(0, 1.5, (per_class, dim - 4))], 1)
                        for c in range(classes)])
    features = torch.tensor(x, dtype=torch.float32)
    labels = np.repeat(np.arange(classes), per_class)
    train = EpisodeSampler(labels, 5, 3, 5, episodes=300, seed=0)
    test = EpisodeSampler(labels, 5, 3, 5, episodes=100, seed=1)

    def score(head) -> float:
        accs = []
        with torch.no_grad():
            for i in range(test.episodes):
                ep = test.episode(i)
                head.process_support_set(features[ep.support],
                                         torch.from_numpy(ep.support_labels(3)))
                logits = head(features[ep.query])
                accs.append(episode_metrics(logits, torch.from_numpy(ep.query_labels(5)),
                                            5)["accuracy"])
        return float(np.mean(accs))

    torch.manual_seed(0)
    head = build_head("siamese", Features(dim))
    before = score(head)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for i in range(train.episodes):
        ep = train.episode(i)
        loss, logits = head.episode_loss(features[ep.support],
                                         torch.from_numpy(ep.support_labels(3)),
                                         features[ep.query],
                                         torch.from_numpy(ep.query_labels(5)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        assert logits.shape == (25, 5)
    weight = F.softplus(head.raw_weight.detach())
    assert weight[:4].mean() > 3 * weight[4:].mean()
    assert np.mean(losses[-50:]) < 0.7 * np.mean(losses[:50])
    assert score(head) > before + 0.1


def test_meta_train_adapt_predict_and_verify_with_a_siamese_head(tmp_path, monkeypatch):
    from fewshot.train.meta_train import meta_train

    task = write_tiny_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = meta_train(config_for(task, "method.head=siamese", "train.episodes=20",
                                "train.val_every=10", "train.augment=false"), quiet=True)
    assert run.read_meta().head == "siamese"
    assert {"raw_weight", "bias"} <= {k.split(".")[-1] for k in run.load_weights()}

    folder = make_folder(tmp_path / "new", {"alpha": 5, "beta": 5}, size=16, seed=3)
    a, b = sorted((folder / "alpha").iterdir())[:2]
    c = next((folder / "beta").iterdir())
    same = run_cli("verify", str(run.path), str(a), str(a), cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("same-finding probability: ")
    p_same = float(same.stdout.split(":")[1])
    other = run_cli("verify", str(run.path), str(a), str(c), cwd=tmp_path)
    assert 0 <= float(other.stdout.split(":")[1]) <= p_same <= 1  # an image is most like itself

    adapted = tmp_path / "adapted"
    done = run_cli("adapt", "--shots", "3", str(folder), "--model", str(run.path), "--out",
                   str(adapted), "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"method": "siamese"' in (adapted / "adapted.json").read_text()
    predicted = run_cli("predict", str(adapted), str(c), "--format", "json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    on_adapted = run_cli("verify", str(adapted), str(b), str(c), cwd=tmp_path)
    assert on_adapted.returncode == 0 and on_adapted.stdout.startswith(
        "same-finding probability: ")
