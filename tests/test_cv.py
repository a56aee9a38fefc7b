"""`fewshot adapt --cv`: the method and its steps / learning rate chosen by k-fold over the
support set, recorded in adapted.json and the model card."""

from __future__ import annotations

import json

import torch
from test_adapt import SIZE, write_run

from conftest import make_folder, run_cli
from fewshot.cross_validation import GRID, candidates, choose


def test_choose_takes_the_best_out_of_fold_accuracy_and_the_simpler_on_ties() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    right = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    wrong = right.flip(1)
    half = torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]])
    table = {"a": half, "b": right, "c": right, "d": wrong, "skip": None}
    record, logits = choose(list(table), table.__getitem__, labels, folds=2)
    assert record["chosen"] == "b" and record["accuracy"] == 1.0 and torch.equal(logits, right)
    assert [g["method"] for g in record["grid"]] == ["a", "b", "c", "d"]  # skip left out
    assert [g["accuracy"] for g in record["grid"]] == [0.5, 1.0, 1.0, 0.0]
    assert candidates("protonet")[-1] == "protonet" and candidates("simpleshot") == list(GRID)


def test_adapt_cv_records_the_choice_and_calibrates_the_chosen_head(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"alpha": 7, "beta": 7}, size=SIZE, seed=2)
    out = tmp_path / "adapted"
    done = run_cli("adapt", "--shots", "4", str(folder), "--model", str(run.path), "--cv",
                   "--out", str(out), "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "adapted.json").read_text())
    cv = doc["cv"]
    assert cv["folds"] == 4 and cv["images"] == 8
    assert [g["method"] for g in cv["grid"]] == candidates("protonet")
    best = max(g["accuracy"] for g in cv["grid"])
    assert cv["accuracy"] == best
    assert cv["chosen"] == next(g["method"] for g in cv["grid"] if g["accuracy"] == best)
    assert doc["method"] == cv["chosen"].partition(":")[0]
    assert doc["calibration"]["fit"] == "k-fold"  # the chosen head's own folds, never a proxy
    assert "cross-validation: " + cv["chosen"] in done.stdout
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Choice of method" in card and f"`{cv['chosen']}` was chosen" in card
    assert "--cv" in card
    predicted = run_cli("predict", str(out), str(next((folder / "beta").iterdir())),
                        cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr


def test_adapt_cv_refuses_a_method_and_a_single_image_class(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"alpha": 5, "beta": 1}, size=SIZE, seed=2)
    both = run_cli("adapt", "--shots", "3", str(folder), "--model", str(run.path), "--cv",
                   "--method", "simpleshot", "--no-wandb", cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.startswith("error: --cv chooses the method")
    single = run_cli("adapt", "--shots", "3", str(folder), "--model", str(run.path), "--cv",
                     "--out", str(tmp_path / "a"), "--no-wandb", cwd=tmp_path)
    assert single.returncode == 1
    assert "error: --cv needs at least 2 support images in every class" in single.stderr
    assert "beta" in single.stderr and not (tmp_path / "a").exists()
