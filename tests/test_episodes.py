from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fewshot.data.episodes import (
    EpisodeSampler,
    ImageFileDataset,
    TensorEpisodes,
    episode_labels,
    split_batch,
)
from fewshot.data.folders import scan_folder
from fewshot.errors import DataError, UsageError

LABELS = np.repeat(np.arange(10), 30)


def test_episode_is_pure_function_of_seed_and_index():
    a = EpisodeSampler(LABELS, 5, 3, 4, seed=7)
    b = EpisodeSampler(LABELS, 5, 3, 4, seed=7)
    for i in (0, 5, 599):
        ea, eb = a.episode(i), b.episode(i)
        assert np.array_equal(ea.classes, eb.classes)
        assert np.array_equal(ea.support, eb.support)
        assert np.array_equal(ea.query, eb.query)
    # order of requests does not matter, and other seeds/indices give other episodes
    fresh = EpisodeSampler(LABELS, 5, 3, 4, seed=7)
    other_seed = EpisodeSampler(LABELS, 5, 3, 4, seed=8)
    assert np.array_equal(a.episode(3).support, fresh.episode(3).support)
    assert not np.array_equal(a.episode(0).support, a.episode(1).support)
    assert not np.array_equal(a.episode(0).support, other_seed.episode(0).support)


def test_episode_same_in_another_process():
    code = (
        "import numpy as np; from fewshot.data.episodes import EpisodeSampler;"
        "e = EpisodeSampler(np.repeat(np.arange(10), 30), 5, 3, 4, seed=7).episode(42);"
        "print(','.join(map(str, np.concatenate([e.classes, e.support, e.query]))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    e = EpisodeSampler(LABELS, 5, 3, 4, seed=7).episode(42)
    mine = ",".join(map(str, np.concatenate([e.classes, e.support, e.query])))
    assert out.stdout.strip() == mine


def test_class_major_order_and_disjoint_support_query():
    sampler = EpisodeSampler(LABELS, 5, 3, 4, seed=1)
    for i in range(50):
        ep = sampler.episode(i)
        assert len(ep.support) == 15 and len(ep.query) == 20
        assert not set(ep.support) & set(ep.query)
        assert len(set(ep.classes.tolist())) == 5
        for label, cls in enumerate(ep.classes):
            assert (LABELS[ep.support[label * 3:(label + 1) * 3]] == cls).all()
            assert (LABELS[ep.query[label * 4:(label + 1) * 4]] == cls).all()
    assert episode_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


def test_classes_balanced_over_many_episodes():
    sampler = EpisodeSampler(LABELS, 5, 1, 1, seed=0)
    counts = Counter(c for i in range(2000) for c in sampler.episode(i).classes.tolist())
    expected = 2000 * 5 / 10
    assert set(counts) == set(range(10))
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values())


def test_too_few_images_names_class_and_counts():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 8)
    with pytest.raises(DataError) as info:
        EpisodeSampler(labels, 3, 5, 15, class_names=["a", "b", "rare"])
    message = str(info.value)
    assert "rare" in message and "8 images" in message and "20" in message
    assert info.value.exit_code == 1


def test_allow_fewer_queries_gives_every_class_the_same_smaller_q():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 8)
    sampler = EpisodeSampler(labels, 3, 5, 15, allow_fewer_queries=True)
    assert sampler.queries == 3
    ep = sampler.episode(0)
    assert len(ep.query) == 9
    with pytest.raises(DataError):
        EpisodeSampler(labels, 3, 8, 15, allow_fewer_queries=True)


def test_more_ways_than_classes_is_a_usage_error():
    with pytest.raises(UsageError):
        EpisodeSampler(LABELS, 11, 1, 1)


def test_groups_never_split_across_support_and_query():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 40)
    groups = rng.integers(0, 12, size=len(labels)) + labels * 100  # 12 groups per class
    sampler = EpisodeSampler(labels, 5, 5, 5, seed=3, groups=groups)
    for i in range(300):
        ep = sampler.episode(i)
        assert not set(groups[ep.support]) & set(groups[ep.query])
        assert len(ep.query) == 25


def test_batch_sampler_with_dataloader_and_tensor_path(folder):
    data = scan_folder(folder)
    sampler = EpisodeSampler(data.labels, 3, 2, 3, episodes=4, seed=0, tasks_per_batch=2)
    loader = DataLoader(ImageFileDataset(data.paths, data.labels, 16), batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) == 2
    images, labels = batches[0]
    assert images.shape == (2 * 3 * 5, 3, 16, 16) and images.dtype == torch.uint8
    episodes = [sampler.episode(0), sampler.episode(1)]
    batch = split_batch(images, sampler, episodes)
    assert batch.support.shape == (2, 6, 3, 16, 16) and batch.query.shape == (2, 9, 3, 16, 16)
    # the labels of the files match the sampled class order
    flat = labels.reshape(2, 15)
    for t, ep in enumerate(episodes):
        assert flat[t, :6].tolist() == np.repeat(ep.classes, 2).tolist()

    # the in-memory path gathers the very same images
    stacked = torch.stack([ImageFileDataset(data.paths, data.labels, 16)[i][0]
                           for i in range(len(data))])
    tensor_batches = list(TensorEpisodes(stacked, sampler))
    assert torch.equal(tensor_batches[0].support, batch.support)
    assert torch.equal(tensor_batches[0].query, batch.query)
    assert tensor_batches[0].query_labels[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_resume_start_continues_the_stream():
    full = EpisodeSampler(LABELS, 5, 1, 2, episodes=10, seed=4)
    rest = EpisodeSampler(LABELS, 5, 1, 2, episodes=10, seed=4, start=6)
    assert list(full)[6:] == list(rest)


def test_groups_spanning_classes_never_in_support_and_query_of_one_episode():
    # a source image (group) holds cells of many classes, as in the Chula smears
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 60)
    groups = rng.integers(0, 40, size=len(labels))
    sampler = EpisodeSampler(labels, 5, 3, 5, seed=2, groups=groups)
    for i in range(300):
        ep = sampler.episode(i)
        assert not set(groups[ep.support]) & set(groups[ep.query])
        assert len(ep.support) == 15 and len(ep.query) == 25
    again = EpisodeSampler(labels, 5, 3, 5, seed=2, groups=groups).episode(7)
    assert np.array_equal(again.query, sampler.episode(7).query)
