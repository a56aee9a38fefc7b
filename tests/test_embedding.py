"""What feature-based heads read of an encoder (model.json `embedding`): pooled stages and
dihedral view averaging, installed without touching the weights, carried from a run to
its base statistics, to evaluate, to an adapted folder and to predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.assembly import load_model
from fewshot.config import load_config
from fewshot.errors import UsageError
from fewshot.evaluate import evaluate
from fewshot.models import build_backbone
from fewshot.models.embedding import (
    EmbeddingSpec,
    embedding,
    install,
    installed,
    uninstall,
)
from fewshot.train.pretrain import pretrain

STAGES = ["features.2", "features.3"]
"""Conv4's last two blocks: 8 channels on a 2x2 and a 1x1 map at 16 px."""


def test_stages_are_pooled_normalised_and_concatenated_and_the_hooks_come_off() -> None:
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", image_size=32).eval()
    images = torch.rand(3, 3, 32, 32)
    plain = encoder(images)
    with embedding(encoder, EmbeddingSpec(stages=["layer3", "layer4"])):
        features = encoder(images)
        layer3 = encoder.layer3(encoder.layer2(encoder.layer1(encoder.maxpool(
            encoder.relu(encoder.bn1(encoder.conv1(images)))))))
        assert installed(encoder).stages == ["layer3", "layer4"]
    assert features.shape == (3, 256 + 512)
    assert torch.allclose(features[:, :256].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(features[:, 256:].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(features[:, :256],
                          torch.nn.functional.normalize(layer3.mean((2, 3)), dim=-1), atol=1e-5)
    assert torch.allclose(features[:, 256:], torch.nn.functional.normalize(plain, dim=-1),
                          atol=1e-5)
    assert torch.equal(encoder(images), plain) and installed(encoder).plain


def test_dihedral_features_do_not_move_when_the_image_is_turned_or_flipped() -> None:
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", image_size=32).eval()
    images = torch.rand(2, 3, 32, 32)
    turned, flipped = images.rot90(1, (-2, -1)), images.flip(-1)
    assert not torch.allclose(encoder(images), encoder(turned), atol=1e-3)
    install(encoder, EmbeddingSpec(dihedral=True))
    reference = encoder(images)
    assert reference.shape == (2, 512)
    assert torch.allclose(encoder(turned), reference, atol=1e-5)
    assert torch.allclose(encoder(flipped), reference, atol=1e-5)


def test_installs_replace_each_other_and_nested_blocks_restore_the_outer_one() -> None:
    """A second install replaces the first instead of pooling pooled features, and a block
    inside another gives back the outer spec, not the plain output."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", image_size=32).eval()
    images = torch.rand(2, 3, 32, 32)
    plain = encoder(images)
    outer = EmbeddingSpec(stages=["layer3", "layer4"])
    install(encoder, outer)
    stages = encoder(images)
    install(encoder, outer)
    assert torch.equal(encoder(images), stages)
    with embedding(encoder, EmbeddingSpec(dihedral=True)):
        assert encoder(images).shape == (2, 512) and installed(encoder).dihedral
        with embedding(encoder, None):
            assert installed(encoder).dihedral
    assert installed(encoder) == outer and torch.equal(encoder(images), stages)
    uninstall(encoder)
    assert torch.equal(encoder(images), plain) and installed(encoder).plain


def test_an_unknown_stage_is_a_usage_error_naming_it() -> None:
    encoder = build_backbone("conv4", image_size=16, channels=8)
    with pytest.raises(UsageError, match="layer9"):
        install(encoder, EmbeddingSpec(stages=["layer9"]))
    with pytest.raises(Exception, match="extra"):
        EmbeddingSpec(stages=[], views=8)


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory) -> tuple[Path, Path]:
    """(task, run) of a tiny pretraining run whose config asks for an embedding."""
    root = tmp_path_factory.mktemp("embedding")
    task = write_tiny_task(root)
    config = load_config(None, [
        f"data.task={task}", "model.backbone_args={channels: 8}", "train.batch_size=8",
        "train.ways=2", "train.shots=2", "train.queries=3", "train.val_episodes=10",
        "train.epochs=2", "tracking.wandb=false",
        f"model.embedding={{stages: [{', '.join(STAGES)}], dihedral: true}}"])
    run = pretrain(config, out=root / "run", quiet=True)
    return task, run.path


def test_a_run_records_its_embedding_and_stores_base_statistics_of_it(embedded_run) -> None:
    _, run = embedded_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["embedding"] == {"stages": STAGES, "dihedral": True}
    head, _ = load_model(run, head="simpleshot")
    assert head.base_mean.shape == (16,)  # two 8-channel stages
    assert head.encoder(torch.rand(2, 3, 16, 16)).shape == (2, 16)
    # finetune re-runs the encoder: it reads the plain output, centred on the plain mean
    tuned, _ = load_model(run, head="finetune")
    assert installed(tuned.encoder).plain and tuned.base_mean.shape == (8,)


def test_evaluate_reads_the_embedding_and_heads_of_one_model_keep_their_own(embedded_run
                                                                             ) -> None:
    task, run = embedded_run
    result = evaluate([str(run)], ["simpleshot", "finetune:finetune_steps=1"], task,
                      ways=2, shots=2, queries=3, episodes=4, device="cpu", quiet=True)
    simpleshot, finetune = result["results"]
    assert simpleshot["embedding"] == {"stages": STAGES, "dihedral": True}
    assert "embedding" not in finetune  # it read the plain output, and says nothing else
    assert all(0.0 <= r["accuracy"]["mean"] <= 1.0 for r in result["results"])


def adapt(run: Path, folder: Path, out: Path, shots: int, method: str) -> None:
    done = run_cli("adapt", "--model", str(run), "--shots", str(shots), "--method", method,
                   str(folder), "--out", str(out), "--no-wandb", cwd=out.parent)
    assert done.returncode == 0, done.stderr


def test_adapt_records_the_embedding_and_predict_reads_it_back(embedded_run, tmp_path) -> None:
    _, run = embedded_run
    folder = make_folder(tmp_path / "new", {"a": 6, "b": 6}, size=16, seed=3)
    out = tmp_path / "adapted"
    adapt(run, folder, out, 3, "linear-probe")
    assert json.loads((out / "adapted.json").read_text())["embedding"] == \
        {"stages": STAGES, "dihedral": True}
    card = " ".join((out / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert "`features.2`, `features.3` pooled" in card and "8 flips and rotations" in card
    first = run_cli("predict", str(out), str(folder / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the same images turned a quarter: the dihedral embedding gives the same answers
    turned = tmp_path / "turned"
    turned.mkdir()
    from PIL import Image

    for path in sorted((folder / "a").iterdir()):
        Image.open(path).transpose(Image.Transpose.ROTATE_90).save(turned / path.name)
    second = run_cli("predict", str(out), str(turned), cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    def answers(text: str) -> list[tuple[str, float]]:
        return [(row.split(",")[1], float(row.split(",")[2]))
                for row in text.strip().splitlines()[1:]]

    for (label, p), (label2, p2) in zip(answers(first.stdout), answers(second.stdout),
                                        strict=True):
        assert label == label2 and p == pytest.approx(p2, abs=2e-3)


def test_an_adapted_model_with_an_embedding_exports_to_torchscript(embedded_run, tmp_path
                                                                   ) -> None:
    _, run = embedded_run
    folder = make_folder(tmp_path / "new", {"a": 4, "b": 4}, size=16, seed=4)
    out = tmp_path / "adapted"
    adapt(run, folder, out, 2, "simpleshot")
    exported = run_cli("export", str(out), "--format", "torchscript", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr  # export checks its file's outputs
    module = torch.jit.load(str(out / "model.pt"))
    images = torch.rand(3, 3, 16, 16) * 255
    assert torch.allclose(module(images), module(images.rot90(1, (-2, -1))), atol=1e-4)
