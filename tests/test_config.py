from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import make_folder
from fewshot.config import load_config
from fewshot.data.tasks import load_task
from fewshot.errors import UsageError


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_set_overrides(tmp_path):
    cfg = write(tmp_path / "c.yaml", {"train": {"lr": 0.5}, "method": {"head": "protonet"}})
    config = load_config(cfg, ["train.lr=0.01", "train.shots=1", "method.head=maml",
                               "model.backbone_args={channels: 32}"])
    assert config.train.lr == 0.01 and config.train.shots == 1
    assert config.method.head == "maml"
    assert config.model.backbone_args == {"channels": 32}
    assert config.train.queries == 15  # untouched default


def test_unknown_key_names_it(tmp_path):
    cfg = write(tmp_path / "c.yaml", {"train": {"lrr": 0.5}})
    with pytest.raises(UsageError) as info:
        load_config(cfg)
    assert info.value.exit_code == 2 and "train.lrr" in str(info.value)
    with pytest.raises(UsageError) as info:
        load_config(write(tmp_path / "ok.yaml", {}), ["eval.wayz=3"])
    assert "eval.wayz" in str(info.value)
    with pytest.raises(UsageError) as info:
        load_config(write(tmp_path / "ok.yaml", {}), ["train.lr=-1"])
    assert "train.lr" in str(info.value)


def test_packaged_quickstart_config_loads():
    assert load_config().name == "quickstart"


def task_file(tmp_path: Path, splits: dict) -> Path:
    make_folder(tmp_path / "root" / "ds", {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3})
    return write(tmp_path / "task.yaml", {
        "name": "t", "image_size": 16, "data_root": "root",
        "datasets": {"x": "ds"}, "splits": splits,
    })


def test_task_loads_and_indexes_splits(tmp_path):
    path = task_file(tmp_path, {"base": ["x/a", "x/b"], "val": ["x/c", "x/d"], "novel": ["x/e"]})
    task = load_task(path)
    base = task.split("base")
    assert base.classes == ["x/a", "x/b"] and len(base) == 6
    assert base.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_task_split_overlap_rejected(tmp_path):
    path = task_file(tmp_path, {"base": ["x/a", "x/b"], "novel": ["x/b"]})
    with pytest.raises(UsageError, match="both 'base' and 'novel'"):
        load_task(path)


def test_task_missing_class_rejected(tmp_path):
    path = task_file(tmp_path, {"base": ["x/a", "x/zzz"]})
    with pytest.raises(UsageError) as info:
        load_task(path)
    assert info.value.exit_code == 2 and "zzz" in str(info.value)


def test_task_single_val_class_rejected(tmp_path):
    path = task_file(tmp_path, {"base": ["x/a", "x/b"], "val": ["x/c"]})
    with pytest.raises(UsageError, match="val"):
        load_task(path)


def test_shipped_tasks_are_valid_on_shared_data():
    root = Path(__file__).resolve().parents[1] / "tasks"
    data = root.parents[1] / "shared" / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    for name in ("blood-rare-rbc", "wbc-to-rbc"):
        task = load_task(root / f"{name}.yaml", data_root=data)
        assert len(task.classes("novel")) == 5 and task.image_size == 64


def test_shipped_quickstart_task_ignores_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "elsewhere"))
    task = load_task("quickstart", data_root=tmp_path / "elsewhere")
    assert len(task.split("base")) > 0 and len(task.split("val")) > 0


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_experiment_configs_load_with_strict_keys(path):
    config = load_config(path, [])
    assert config.name == path.stem  # run directories are named after their config
    assert (path.parent / config.data.task).is_file()


@pytest.mark.parametrize("key", ["base_mean", "base_features", "ways", "feature_dim"])
def test_options_the_model_fills_in_are_not_the_users(tmp_path, key):
    """The base mean and the feature size come from the model, the ways from the episode:
    a value set by hand is refused, and the head's listed options leave them out."""
    from fewshot.methods import head_class, parse_head_spec

    head = "simpleshot" if key.startswith("base") else "maml"
    with pytest.raises(UsageError) as info:
        parse_head_spec(f"{head}:{key}=3")
    assert info.value.exit_code == 2 and key in str(info.value)
    with pytest.raises(UsageError) as info:
        load_config(write(tmp_path / "c.yaml", {"method": {"head": head, key: 3}}))
    assert f"method.{key}" in str(info.value)
    assert key in head_class(head).options()  # still offered by the caller
    assert key not in head_class(head).user_options()
