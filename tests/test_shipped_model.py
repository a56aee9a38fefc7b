"""The model shipped in the package (blood-v1): small, safe to load, documented, and what
`fewshot adapt` uses when no model is named and there is no runs/latest."""

from __future__ import annotations

import json

from safetensors import safe_open

from conftest import run_cli
from fewshot.data.files import packaged, shipped_model
from fewshot.run import resolve_run

NAME = "blood-v1"


def test_blood_v1_is_shipped_in_float16_under_25_mb_with_its_base_features() -> None:
    folder = shipped_model(NAME)
    assert folder is not None and folder == packaged("models") / NAME
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    with safe_open(str(weights), "pt") as handle:
        dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    run = resolve_run(NAME)
    meta = run.read_meta()
    assert (meta.backbone, meta.image_size) == ("resnet18", 64)
    stored = run.load_prototypes()
    assert stored.class_names == meta.classes["base"] and len(stored.class_names) == 15
    assert stored.base_features is not None
    # heads read layer3 + layer4 over dihedral views; finetune the plain 512-d output
    assert meta.embedding.stages == ["layer3", "layer4"] and meta.embedding.dihedral
    assert stored.base_mean.shape == (256 + 512,) and stored.base_features.shape[1] == 768
    assert stored.output_mean is not None and stored.output_mean.shape == (512,)


def test_the_model_card_names_data_licenses_classes_and_the_left_out_sample() -> None:
    folder = shipped_model(NAME)
    card = " ".join((folder / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    meta = json.loads((folder / "model.json").read_text())
    for name in meta["classes"]["base"]:
        assert name.partition("/")[2] in card
    for needle in ("CC BY 4.0", "doi:10.17632/snkd93bnjr.1", "Chula", "quickstart sample",
                   "not evidence", "| linear-probe | 5 |"):
        assert needle in card, needle


def test_adapt_without_a_model_uses_blood_v1_and_predicts(tmp_path) -> None:
    sample = tmp_path / "new_disease"
    assert run_cli("data", "sample", str(sample), cwd=tmp_path).returncode == 0
    done = run_cli("adapt", "--shots", "5", str(sample), "--no-wandb", "--out",
                   str(tmp_path / "adapted"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert NAME in done.stdout.splitlines()[0]
    assert "training the quickstart" not in done.stderr
    card = (tmp_path / "adapted" / "MODEL_CARD.md").read_text(encoding="utf-8")
    reproduce = card.rpartition("## Reproduce")[2]
    assert f"--model {NAME} " in reproduce  # by name: the install path is this machine's
    predicted = run_cli("predict", str(tmp_path / "adapted"), str(sample / "basophil"),
                        cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = predicted.stdout.strip().splitlines()
    assert len(rows) == 1 + 60 and rows[0].startswith("path,prediction,probability")
    assert sum(",basophil," in row for row in rows[1:]) > 30  # seen classes: a demo, not evidence


def test_a_reproduce_command_names_the_shipped_model_unless_a_folder_would_shadow_it(
        tmp_path, monkeypatch) -> None:
    from fewshot.model_card import model_argument

    installed = str(shipped_model(NAME).resolve())
    monkeypatch.chdir(tmp_path)
    assert model_argument(installed) == NAME
    assert model_argument(str(tmp_path / "runs" / NAME)) == str(tmp_path / "runs" / NAME)
    (tmp_path / NAME).mkdir()  # `--model blood-v1` would now mean this folder
    assert model_argument(installed) == installed
