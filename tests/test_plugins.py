"""A head and a backbone defined outside the package reach every command: the head through
the `fewshot.heads` entry-point group of an installed distribution, the backbone through
`FEWSHOT_PLUGINS`; options are declared by the head and checked everywhere."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli, write_tiny_task

PLUGIN_HEAD = '''
"""Prototypes compared by cosine similarity at a fixed scale."""
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.methods import FewShotHead, register_head
from fewshot.methods.common import class_means


@register_head("scaled-cosine")
class ScaledCosine(FewShotHead):
    def __init__(self, encoder: nn.Module, scale: float = 10.0) -> None:
        super().__init__(encoder)
        self.scale = scale

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.prototypes = F.normalize(class_means(self.encoder(support), support_labels), dim=-1)

    def forward(self, query: Tensor) -> Tensor:
        return self.scale * F.normalize(self.encoder(query), dim=-1) @ self.prototypes.T
'''

PLUGIN_BACKBONE = '''
from torch import nn

from fewshot.models import Backbone, register_backbone


class Tiny(Backbone):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.feature_dim = width
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images):
        return self.net(images)


@register_backbone("tiny-cnn")
def tiny_cnn(image_size: int = 84, in_channels: int = 3, width: int = 8) -> Tiny:
    return Tiny(in_channels, width)
'''


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """A site folder holding the two plugin modules and an installed distribution's
    metadata whose entry point names the head module."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "scaled_cosine_head.py").write_text(textwrap.dedent(PLUGIN_HEAD))
    (site / "tiny_backbone.py").write_text(textwrap.dedent(PLUGIN_BACKBONE))
    info = site / "fewshot_scaled_cosine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fewshot-scaled-cosine\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[fewshot.heads]\n"
                                           "scaled-cosine = scaled_cosine_head\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FEWSHOT_PLUGINS": "tiny_backbone"}


def test_a_plugin_head_trains_and_evaluates_through_the_cli(tmp_path, plugin_env) -> None:
    task = write_tiny_task(tmp_path)
    listed = run_cli("list", "heads", env=plugin_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "scaled-cosine" in listed.stdout and "scale" in listed.stdout

    run = tmp_path / "run"
    sets = ["model.backbone=tiny-cnn", "model.backbone_args={width: 6}",
            "method.head=scaled-cosine", "method.scale=5.0", f"data.task={task}",
            "train.ways=2", "train.shots=2", "train.queries=3", "train.episodes=6",
            "train.val_every=3", "train.val_episodes=4", "tracking.wandb=false"]
    trained = run_cli("meta-train", "--quiet", "--out", str(run),
                      *[a for s in sets for a in ("--set", s)], env=plugin_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    meta = json.loads((run / "model.json").read_text())
    assert meta["head"] == "scaled-cosine" and meta["head_options"] == {"scale": 5.0}
    assert meta["backbone"] == "tiny-cnn"

    out = tmp_path / "result.json"
    scored = run_cli("evaluate", "--model", str(run), "--head", "scaled-cosine:scale=20",
                     "--head", "simpleshot", "--task", str(task), "--ways", "2", "--shots", "2",
                     "--queries", "3", "--episodes", "5", "--no-wandb", "--json", str(out),
                     env=plugin_env, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(out.read_text())
    assert [r["head"] for r in result["results"]] == ["scaled-cosine:scale=20", "simpleshot"]
    assert [r["protocol"] for r in result["results"]] == ["inductive", "inductive"]
    assert result["protocol"] == "inductive"


def test_undeclared_options_are_refused_with_one_line(tmp_path, plugin_env) -> None:
    task = write_tiny_task(tmp_path)
    bad_config = run_cli("meta-train", "--set", "method.head=scaled-cosine", "--set",
                         "method.inner_steps=3", "--set", f"data.task={task}",
                         env=plugin_env, cwd=tmp_path)
    assert bad_config.returncode == 2
    assert "method.inner_steps" in bad_config.stderr and "scale" in bad_config.stderr
    assert "Traceback" not in bad_config.stderr

    bad_head = run_cli("evaluate", "--model", "pixels", "--head", "simpleshot:steps=3",
                       "--task", str(task), env=plugin_env, cwd=tmp_path)
    assert bad_head.returncode == 2
    assert bad_head.stderr.strip().count("\n") == 0
    assert "head 'simpleshot' has no option 'steps'" in bad_head.stderr

    unknown = run_cli("meta-train", "--set", "method.head=no-such-head", "--set",
                      f"data.task={task}", env={"FEWSHOT_PLUGINS": "no_such_module"},
                      cwd=tmp_path)
    assert unknown.returncode == 2 and "no_such_module" in unknown.stderr
