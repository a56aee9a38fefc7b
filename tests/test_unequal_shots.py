"""Unequal support sets: evaluate's `--shots A-B` and `--shots K1,K2,...`, and the
class-balanced loss weights of the linear probe and finetune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli, write_tiny_task
from fewshot.data.episodes import EpisodeSampler, parse_shots, shots_json, split_batch
from fewshot.errors import UsageError
from fewshot.methods import build_head
from fewshot.methods.linear_probe import balanced_weights


def test_shots_are_parsed_as_k_a_range_or_a_list() -> None:
    assert parse_shots("5") == 5 and parse_shots("1-5") == (1, 5) and parse_shots("3-3") == 3
    assert parse_shots("1,2,3") == [1, 2, 3]
    assert (shots_json(5), shots_json((1, 5)), shots_json([1, 2])) == (5, {"min": 1, "max": 5},
                                                                       [1, 2])
    with pytest.raises(UsageError, match="K, A-B or K1,K2"):
        parse_shots("five")


def test_a_range_draws_each_class_within_it_seeded_with_the_5_shot_queries() -> None:
    labels = np.repeat(np.arange(6), 30)
    ranged = EpisodeSampler(labels, 5, (1, 5), 10, seed=3)
    equal = EpisodeSampler(labels, 5, 5, 10, seed=3)
    drawn = []
    for i in range(40):
        ep = ranged.episode(i)
        assert ep.support_counts == ranged.episode(i).support_counts  # seeded by (seed, i)
        assert all(1 <= k <= 5 for k in ep.support_counts)
        assert len(ep.support) == sum(ep.support_counts)
        # class-major, and labels follow the counts
        assert np.array_equal(labels[ep.support], ep.classes[ep.support_labels(5)])
        assert not set(ep.support) & set(ep.query)
        same = equal.episode(i)  # same classes and queries as the 5-shot episode
        assert np.array_equal(ep.classes, same.classes) and np.array_equal(ep.query, same.query)
        drawn += list(ep.support_counts)
    assert set(drawn) == {1, 2, 3, 4, 5}
    other = [EpisodeSampler(labels, 5, (1, 5), 10, seed=4).episode(i).support_counts
             for i in range(10)]
    assert other != [ranged.episode(i).support_counts for i in range(10)]


def test_a_list_gives_one_count_per_way_and_groups_still_hold() -> None:
    labels = np.repeat(np.arange(5), 24)
    groups = np.arange(len(labels)) // 3
    sampler = EpisodeSampler(labels, 5, [1, 2, 3, 4, 5], 6, seed=0, groups=groups)
    for i in range(10):
        ep = sampler.episode(i)
        assert ep.support_counts == (1, 2, 3, 4, 5)
        assert np.bincount(ep.support_labels(5)).tolist() == [1, 2, 3, 4, 5]
        assert not set(groups[ep.support]) & set(groups[ep.query])
    with pytest.raises(UsageError, match="3 shot counts for 5 ways"):
        EpisodeSampler(labels, 5, [1, 2, 3], 6)
    with pytest.raises(UsageError, match="1 <= A <= B"):
        EpisodeSampler(labels, 5, (4, 2), 6)
    with pytest.raises(UsageError, match="meta-training keeps equal shots"):
        EpisodeSampler(labels, 5, (1, 5), 6, tasks_per_batch=2)
    with pytest.raises(UsageError, match="equal shots"):
        split_batch(torch.zeros(1), sampler, [sampler.episode(0)])


def test_evaluate_cli_records_unequal_shots(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    out = tmp_path / "r.json"
    done = run_cli("evaluate", "--model", "pixels", "--head", "simpleshot", "--head",
                   "linear-probe", "--task", str(task), "--ways", "2", "--shots", "1-4",
                   "--queries", "3", "--episodes", "6", "--json", str(out), "--no-wandb",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["shots"] == {"min": 1, "max": 4}
    assert "1-4-shot" in done.stdout
    listed = run_cli("evaluate", "--model", "pixels", "--task", str(task), "--ways", "2",
                     "--shots", "1,3", "--queries", "3", "--episodes", "2", "--json",
                     str(out), "--no-wandb", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(out.read_text())["shots"] == [1, 3]
    bad = run_cli("evaluate", "--model", "pixels", "--task", str(task), "--ways", "2",
                  "--shots", "1,2,3", "--no-wandb", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: 3 shot counts for 2 ways")


def test_class_balanced_weights_protect_the_rare_class() -> None:
    assert torch.equal(balanced_weights(torch.tensor([0, 0, 1, 1])), torch.ones(2))
    assert balanced_weights(torch.tensor([0, 1, 1, 1])).tolist() == pytest.approx([2.0, 2 / 3])
    # two overlapping classes; class 0 has 2 support images, class 1 has 20
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 16))
    centres[0, 0], centres[1, 0] = 1.0, -1.0

    def draw(counts):
        x = np.concatenate([centres[c] + rng.normal(0, 1.2, (n, 16))
                            for c, n in enumerate(counts)])
        return torch.tensor(x, dtype=torch.float32), torch.repeat_interleave(
            torch.arange(2), torch.tensor(counts))

    rare_recall = {True: [], False: []}
    for _ in range(20):
        support, labels = draw([2, 20])
        query, query_labels = draw([200, 200])
        for balance in (True, False):
            head = build_head("linear-probe", nn.Identity(), steps=300, lr=0.05,
                              balance=balance)
            head.process_support_set(support, labels)
            with torch.no_grad():
                pred = head(query).argmax(1)
            rare_recall[balance].append(float((pred[query_labels == 0] == 0).float().mean()))
    assert np.mean(rare_recall[True]) > np.mean(rare_recall[False]) + 0.05
