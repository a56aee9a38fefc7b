"""The power transform (`method.power`, `--head simpleshot:power=0.5`) and PT-MAP.

The centre of power-transformed features is the mean of the transformed base features,
not the transformed base mean; runs store a base subset so that adapt, which has no base
images, can compute it. PT-MAP is transductive, deterministic and balanced by design."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_transductive import accuracy, episodes
from torch import nn

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.adapt import BaseModel
from fewshot.adapted import Adapted
from fewshot.assembly import load_model
from fewshot.config import load_config
from fewshot.data.folders import scan_folder
from fewshot.data.images import decode_all
from fewshot.errors import UsageError
from fewshot.methods import build_head
from fewshot.methods.common import power_transform
from fewshot.methods.pt_map import sinkhorn
from fewshot.run import RunDir
from fewshot.schema import BASE_FEATURES_PER_CLASS, Prototypes
from fewshot.train.pretrain import pretrain

TINY = ["model.backbone_args={channels: 8}", "train.batch_size=8", "train.ways=2",
        "train.shots=2", "train.queries=3", "train.val_episodes=10", "train.lr=0.01",
        "tracking.wandb=false", "train.epochs=2"]


def test_power_centres_on_the_mean_of_transformed_base_features() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(40, 6, generator=generator) * 3  # non-negative, as a ReLU network's
    head = build_head("simpleshot", nn.Identity(), base_mean=base.mean(0), power=0.5,
                      base_features=base)
    expected_centre = base.sqrt().mean(0)
    assert torch.allclose(head.base_mean, expected_centre)
    assert not torch.allclose(head.base_mean, base.mean(0).sqrt())  # not the same thing
    support, labels = torch.rand(4, 6, generator=generator), torch.tensor([0, 0, 1, 1])
    query = torch.rand(3, 6, generator=generator)
    head.process_support_set(support, labels)

    def transform(x):
        return F.normalize(x.sqrt() - expected_centre, dim=-1)

    centroids = torch.stack([transform(support[:2]).mean(0), transform(support[2:]).mean(0)])
    assert torch.allclose(head(query), -torch.cdist(transform(query), centroids) ** 2,
                          atol=1e-5)
    signed = power_transform(torch.tensor([-4.0, 0.0, 9.0]), 0.5)
    assert signed.tolist() == [-2.0, 0.0, 3.0]
    plain = build_head("simpleshot", nn.Identity(), base_mean=base.mean(0))
    assert torch.equal(plain.base_mean, base.mean(0))  # no power: the base mean, as before


@pytest.mark.parametrize("name", ["linear-probe", "bd-cspn", "tim", "tim-probe",
                                  "laplacianshot", "batch-centred-probe"])
def test_other_heads_take_the_same_transform(name: str) -> None:
    base = torch.rand(30, 8, generator=torch.Generator().manual_seed(1))
    head = build_head(name, nn.Identity(), power=0.5, base_features=base)
    assert torch.allclose(head.base_mean, base.sqrt().mean(0))
    assert accuracy(head, count=3, dim=8) >= 0  # runs on an episode end to end


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(task, run directory) of a tiny real pretraining run."""
    root = tmp_path_factory.mktemp("power")
    task = write_tiny_task(root)
    config = load_config(None, [f"data.task={task}", *TINY])
    return task, pretrain(config, out=root / "run", quiet=True).path


def test_a_run_stores_a_base_subset_and_heads_centre_on_it(run) -> None:
    _, path = run
    stored = RunDir(path).load_prototypes()
    assert stored.base_features is not None
    assert stored.base_features.shape == (4 * min(10, BASE_FEATURES_PER_CLASS),
                                           stored.base_mean.shape[0])
    head, _ = load_model(path, head="simpleshot", power=0.5)
    assert torch.allclose(head.base_mean, power_transform(stored.base_features, 0.5).mean(0))
    plain, _ = load_model(path, head="simpleshot")
    assert torch.equal(plain.base_mean, stored.base_mean)


def test_a_run_without_base_features_refuses_power_in_one_line(run, tmp_path) -> None:
    import shutil

    _, path = run
    old = tmp_path / "old"
    shutil.copytree(path, old)
    stored = RunDir(old).load_prototypes()
    Prototypes(stored.class_names, stored.prototypes, stored.base_mean).save(
        RunDir(old).prototypes_path)  # as written before the subset existed
    assert RunDir(old).load_prototypes().base_features is None
    with pytest.raises(UsageError, match="needs base features"):
        load_model(old, head="simpleshot", power=0.5)
    load_model(old, head="simpleshot")  # without power it still works


def test_evaluate_cli_and_adapt_round_trip_with_power(run, tmp_path) -> None:
    task, path = run
    done = run_cli("evaluate", "--model", str(path), "--model", str(path), "--head",
                   "simpleshot", "--head", "simpleshot:power=0.5", "--task", str(task),
                   "--ways", "2", "--shots", "2", "--queries", "3", "--episodes", "6",
                   "--json", str(tmp_path / "eval.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert [r["head"] for r in result["results"]] == ["simpleshot", "simpleshot:power=0.5"]

    folder = make_folder(tmp_path / "new", {"alpha": 6, "beta": 6}, size=16, seed=3)
    adapted = BaseModel(path).adapt(folder, shots=3, method="simpleshot:power=0.5",
                                    out=tmp_path / "adapted")
    loaded = Adapted.load(tmp_path / "adapted")
    assert loaded.head_options.get("power") == 0.5
    assert torch.equal(loaded.head.base_mean, adapted.head.base_mean)  # the centre travels
    images = decode_all(scan_folder(folder).paths, 16, quiet=True)
    assert torch.equal(adapted.probabilities(images), loaded.probabilities(images))


# ------------------------------------------------------------------------------ PT-MAP
def test_sinkhorn_gives_one_mass_per_query_and_balanced_classes() -> None:
    cost = torch.rand(12, 3, generator=torch.Generator().manual_seed(2))
    plan = sinkhorn(cost, lam=10.0)
    assert torch.allclose(plan.sum(1), torch.ones(12), atol=1e-5)
    assert torch.allclose(plan.sum(0), torch.full((3,), 4.0), atol=1e-3)


def test_pt_map_uses_the_batch_is_deterministic_and_falls_back() -> None:
    head = build_head("pt-map", nn.Identity())
    assert head.transductive and head.protocol == "transductive" and head.feature_based
    again = build_head("pt-map", nn.Identity())
    assert accuracy(head, count=5) == accuracy(again, count=5)
    simpleshot = build_head("simpleshot", nn.Identity())
    assert accuracy(head, shots=1) > accuracy(simpleshot, shots=1)
    support, labels, query, _ = next(episodes(1))
    head.process_support_set(support, labels)
    together = head(query)
    assert torch.allclose(together.exp().sum(1), torch.ones(len(query)), atol=1e-4)
    assert not torch.allclose(head(query[:20])[:1], together[:1])  # depends on the batch
    few = head(query[:3])  # too small a batch: nearest support prototype, one by one
    one = head(query[:1])
    assert torch.allclose(few[:1], one, atol=1e-5)


@pytest.mark.parametrize("method", ["pt-map", "tim-probe", "laplacianshot",
                                    "laplacianshot:probe=true", "batch-centred-probe"])
def test_a_transductive_head_adapts_and_predicts_jointly(run, tmp_path, method) -> None:
    _, path = run
    folder = make_folder(tmp_path / "new", {"alpha": 8, "beta": 8}, size=16, seed=4)
    BaseModel(path).adapt(folder, shots=2, method=method, out=tmp_path / "adapted")
    meta = json.loads((tmp_path / "adapted" / "adapted.json").read_text())
    assert meta["protocol"] == "transductive"
    done = run_cli("predict", str(tmp_path / "adapted"), str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "transductive" in done.stdout + done.stderr
