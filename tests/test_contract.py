"""The head contract, the typed model files and the training loop's seams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli, write_tiny_task
from fewshot.config import load_config
from fewshot.errors import DataError, UsageError
from fewshot.evaluate import evaluate
from fewshot.methods import build_head, parse_head_spec, select_options
from fewshot.models.conv4 import Conv4
from fewshot.schema import ModelMeta, Prototypes

TINY = ["model.backbone_args={channels: 8}", "train.ways=2", "train.shots=2",
        "train.queries=3", "train.val_episodes=4", "train.val_every=3", "train.episodes=6",
        "tracking.wandb=false", "train.augment=false"]


def test_head_options_are_declared_parsed_and_checked() -> None:
    assert parse_head_spec("linear-probe:steps=50,lr=0.1") == ("linear-probe",
                                                                 {"steps": 50, "lr": 0.1})
    assert parse_head_spec("maml:transductive=true")[1] == {"transductive": True}
    with pytest.raises(UsageError, match="has no option 'steps'"):
        parse_head_spec("protonet:steps=3")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_head_spec("protonet:cosine")
    with pytest.raises(UsageError, match="has no option 'seed'"):
        build_head("protonet", nn.Identity(), seed=1)
    assert select_options("linear-probe", {"seed": 3, "ways": 5}) == {"seed": 3}


def test_protocol_and_feature_based_are_per_instance() -> None:
    assert build_head("maml", Conv4(16, channels=4)).protocol == "inductive"
    assert build_head("maml", Conv4(16, channels=4), transductive=True).protocol == \
        "transductive"
    assert build_head("simpleshot", nn.Identity()).feature_based
    assert not build_head("finetune", Conv4(16, channels=4)).feature_based
    with pytest.raises(UsageError, match="re-runs the encoder"):
        with build_head("maml", Conv4(16, channels=4)).on_features():
            pass


def test_on_features_swaps_the_encoder_back() -> None:
    encoder = nn.Linear(4, 4)
    head = build_head("protonet", encoder)
    with head.on_features():
        assert isinstance(head.encoder, nn.Identity)
        head.process_support_set(torch.eye(4)[:2], torch.tensor([0, 1]))
    assert head.encoder is encoder


def test_maml_task_state_round_trips() -> None:
    torch.manual_seed(0)
    head = build_head("maml", Conv4(16, channels=4), ways=2, inner_steps=1)
    support, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    query = torch.randn(3, 3, 16, 16)
    head.process_support_set(support, labels)
    expected = head(query).detach()
    other = build_head("maml", Conv4(16, channels=4), ways=2, inner_steps=1)
    other.load_state_dict(head.state_dict())
    other.load_task_state(head.task_state())
    assert torch.allclose(other(query), expected)
    with pytest.raises(UsageError, match="keeps no task state"):
        build_head("protonet", nn.Identity()).load_task_state({"support": torch.zeros(1)})


def test_method_keys_are_checked_against_the_chosen_head(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"method\.inner_steps") as error:
        load_config(None, ["method.head=protonet", "method.inner_steps=3"])
    assert "distance" in error.value.fix  # names what the head does take
    with pytest.raises(UsageError, match="unknown head"):
        load_config(None, ["method.head=knn"])
    config = load_config(None, ["method.head=maml", "method.inner_steps=3"])
    assert config.to_dict()["method"]["inner_steps"] == 3
    assert "distance" not in config.to_dict()["method"]  # not a MAML option
    assert load_config(None, ["method.head=protonet"]).to_dict()["method"] == {
        "head": "protonet", "distance": "euclidean"}
    # an option the head declares but the typed section does not list is taken too
    assert load_config(None, ["method.head=protonet", "method.temperature=5"]
                       ).method.head_options() == {"distance": "euclidean", "temperature": 5}


def test_model_json_is_validated_before_anything_is_built(tmp_path) -> None:
    meta = ModelMeta(kind="meta-train", task="t", backbone="conv4", image_size=16,
                     normalization={"mean": [0.5] * 3, "std": [0.2] * 3}, feature_dim=8,
                     head="protonet")
    path = tmp_path / "model.json"
    meta.write(path)
    assert ModelMeta.read(path) == meta
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "image_size": 100_000}))
    with pytest.raises(DataError, match="invalid at 'image_size'"):
        ModelMeta.read(path)
    path.write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(UsageError, match="newer fewshot"):
        ModelMeta.read(path)


def test_prototypes_carry_their_version_and_shapes(tmp_path) -> None:
    path = tmp_path / "prototypes.safetensors"
    Prototypes(["a", "b"], torch.randn(2, 4), torch.randn(4)).save(path)
    stored = Prototypes.load(path)
    assert stored.class_names == ["a", "b"] and stored.prototypes.shape == (2, 4)
    Prototypes(["a"], torch.randn(2, 4), torch.randn(4)).save(path)
    with pytest.raises(DataError, match="do not match"):
        Prototypes.load(path)


def test_results_name_their_protocol_and_a_mixed_table_says_so(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    result = evaluate(["random:conv4"], ["simpleshot", "maml:transductive=true,inner_steps=1"],
                      task, ways=2, shots=2, queries=3, episodes=3, quiet=True)
    assert [r["protocol"] for r in result["results"]] == ["inductive", "transductive"]
    assert result["protocol"] == "mixed"
    from fewshot.report import results_table

    assert "mixed" in str(results_table(result).title)


class WeightPenalty:
    """An auxiliary objective: the squared norm of every weight (pulls weights to zero)."""

    name, weight = "penalty", 10.0

    def loss(self, model: nn.Module, position: int) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)


def test_extra_objectives_join_the_step(tmp_path, monkeypatch) -> None:
    from fewshot.train.meta_train import meta_train

    monkeypatch.chdir(tmp_path)
    task = write_tiny_task(tmp_path)
    plain = meta_train(load_config(None, [f"data.task={task}", *TINY]), out=tmp_path / "a",
                       quiet=True)
    pulled = meta_train(load_config(None, [f"data.task={task}", *TINY]), out=tmp_path / "b",
                        objectives=[WeightPenalty()], quiet=True)

    def norm(run: Path) -> float:
        from safetensors.torch import load_file

        weights = load_file(run / "checkpoint" / "last.safetensors")
        return sum(float(w.float().pow(2).sum()) for w in weights.values())

    assert norm(pulled.path) < norm(plain.path)
    lines = [json.loads(x) for x in (pulled.path / "metrics.jsonl").read_text().splitlines()]
    assert sum("train/penalty_loss" in r for r in lines) == 6


def test_evaluate_takes_its_defaults_from_a_config(tmp_path) -> None:
    import yaml

    task = write_tiny_task(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"task": str(task)},
                                      "eval": {"ways": 2, "shots": 1, "queries": 2,
                                               "episodes": 7, "seed": 3}}))
    out = tmp_path / "r.json"
    done = run_cli("evaluate", "--config", str(config), "--model", "pixels", "--queries", "3",
                   "--no-wandb", "--json", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["ways"], result["shots"], result["queries"], result["episodes"],
            result["seed"]) == (2, 1, 3, 7, 3)
    assert Path(result["task"]).name == "tiny" or result["task"] == "tiny"


def test_a_shipped_model_name_resolves_unless_a_folder_has_it(tmp_path, monkeypatch) -> None:
    from test_adapt import write_run

    import fewshot.data.files as files
    from fewshot.run import resolve_run

    shelf = tmp_path / "resources"
    write_run(shelf / "models" / "demo-v1")
    monkeypatch.setattr(files, "packaged", lambda name: shelf / name)
    monkeypatch.chdir(tmp_path)
    assert resolve_run("demo-v1").path == (shelf / "models" / "demo-v1").resolve()
    result = evaluate(["demo-v1"], ["simpleshot"], write_tiny_task(tmp_path / "t"), ways=2,
                      shots=1, queries=2, episodes=2, quiet=True)
    assert result["results"][0]["model"] == "demo-v1"
    local = write_run(tmp_path / "demo-v1")  # a real folder of that name wins
    assert resolve_run("demo-v1").path == local.path.resolve()
    with pytest.raises(UsageError, match="run directory not found"):
        resolve_run("no-such-model")


def test_help_lists_every_built_in_head() -> None:
    import fewshot.methods.builtin  # noqa: F401
    from fewshot.cli import HEAD_NAMES
    from fewshot.methods import HEADS

    assert set(HEAD_NAMES.split(", ")) == {n for n, c in HEADS.items()
                                           if c.__module__.startswith("fewshot.")}


def test_a_bare_resume_means_runs_latest() -> None:
    from fewshot.cli import optional_values

    assert optional_values(["meta-train", "--resume"]) == ["meta-train", "--resume",
                                                            "runs/latest"]
    assert optional_values(["pretrain", "--resume", "--quiet"])[2] == "runs/latest"
    assert optional_values(["pretrain", "--resume", "runs/a"]) == ["pretrain", "--resume",
                                                                   "runs/a"]
    help_text = run_cli("meta-train", "--help").stdout
    assert "--resume" in help_text and "[RUN_DIR]" in help_text


def test_training_never_opens_a_novel_file_and_refuses_a_shared_one(tmp_path) -> None:
    """Novel images are garbage bytes here: pretrain and meta-train still run, since they
    never decode them; a val file that is a link to a novel one stops training (exit 2)."""
    task = write_tiny_task(tmp_path)
    novel = [p for c in ("c6", "c7") for p in sorted((tmp_path / "data" / "ds" / c).iterdir())]
    for path in novel:
        path.write_bytes(b"not an image")
    tiny = ["--set", f"data.task={task}", "--set", "model.backbone_args={channels: 4}",
            "--set", "train.ways=2", "--set", "train.shots=1", "--set", "train.queries=2",
            "--set", "train.val_episodes=4", "--set", "tracking.wandb=false"]
    done = run_cli("pretrain", "--out", str(tmp_path / "pre"), "--set", "train.epochs=1",
                   "--set", "train.batch_size=8", *tiny, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_cli("meta-train", "--out", str(tmp_path / "meta"), "--set", "train.episodes=2",
                   *tiny, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    (tmp_path / "data" / "ds" / "c4" / "shared.png").symlink_to(novel[0])
    refused = run_cli("pretrain", "--out", str(tmp_path / "again"), "--set", "train.epochs=1",
                      *tiny, cwd=tmp_path)
    assert refused.returncode == 2
    assert "a file is in both the 'val' and 'novel' splits" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "again").exists()


def test_evaluate_refuses_a_task_whose_val_holds_a_copy_of_a_novel_file(tmp_path) -> None:
    """A byte-identical copy (not a link) of a novel image in val: evaluate, which reads the
    novel images anyway, compares contents and stops (exit 2, one line naming both)."""
    import shutil

    task = write_tiny_task(tmp_path)
    args = ("evaluate", "--model", "pixels", "--head", "simpleshot", "--task", str(task),
            "--ways", "2", "--shots", "1", "--queries", "2", "--episodes", "3", "--no-wandb")
    fine = run_cli(*args, cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr
    novel = sorted((tmp_path / "data" / "ds" / "c6").iterdir())[0]
    shutil.copyfile(novel, tmp_path / "data" / "ds" / "c4" / "copy.png")
    refused = run_cli(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert "in both the 'val' and 'novel' splits (the same bytes)" in refused.stderr
    assert "copy.png" in refused.stderr and novel.name in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
