"""Predictions a clinic can trust: temperature calibration on the support set, and the
out-of-domain checks of adapt and predict (on the shipped blood-v1 and real blood cells)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from test_adapt import SIZE, write_run

from conftest import make_folder, run_cli
from fewshot.adapt import BaseModel
from fewshot.adapted import Adapted
from fewshot.calibration import brier, ece, fit_temperature, fold_count, out_of_fold_logits
from fewshot.ood import fit_domain, mahalanobis, nearest_support, support_threshold
from fewshot.run import RunDir
from fewshot.schema import DOMAIN_KEYS, Prototypes

# ------------------------------------------------------------------ calibration, units


def test_fitted_temperature_recovers_the_one_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, (4000, 5)))
    for true_t in (0.5, 2.0):
        probs = torch.softmax(logits / true_t, dim=1).numpy()
        labels = torch.tensor([rng.choice(5, p=p / p.sum()) for p in probs])
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.15)


def test_ece_and_brier_of_known_cases() -> None:
    # always 90% sure, right half the time: ECE 0.4
    probs = torch.tensor([[0.9, 0.1]] * 10, dtype=torch.float64)
    labels = torch.tensor([0, 1] * 5)
    assert ece(probs, labels) == pytest.approx(0.4)
    assert brier(probs, labels) == pytest.approx(0.5 * 0.02 + 0.5 * 1.62)
    sure_and_right = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert ece(sure_and_right, torch.tensor([0, 1])) == 0.0
    assert brier(sure_and_right, torch.tensor([0, 1])) == 0.0


def test_folds_never_score_an_image_with_a_head_fitted_on_it() -> None:
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 4)
    assert fold_count(labels) == 4
    assert fold_count(torch.tensor([0, 0, 1])) == 0  # one image of class 1: nothing to fold
    seen: list[tuple[set[int], set[int]]] = []

    def fit_predict(train, train_labels, test):
        assert set(train_labels.tolist()) == {0, 1, 2}  # every class in every fold's fit
        seen.append((set(train.tolist()), set(test.tolist())))
        return torch.zeros(len(test), 3) + test[:, None].float()

    logits = out_of_fold_logits(fit_predict, labels, fold_count(labels), seed=0)
    assert all(not (train & test) for train, test in seen)
    assert set().union(*(test for _, test in seen)) == set(range(14))
    assert torch.equal(logits[:, 0], torch.arange(14).float())  # each row from its own fold


def test_a_perfect_fold_score_does_not_drive_the_temperature_to_zero() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]] * 5)
    labels = torch.tensor([0, 1] * 5)
    assert 0.2 < fit_temperature(logits, labels) < 1.0


# ------------------------------------------------------------------ calibration in adapt


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("trust") / "tiny").path


def new_classes(root: Path, count: int) -> Path:
    return make_folder(root, {"alpha": count, "beta": count, "gamma": count}, size=SIZE,
                       seed=3)


def test_adapt_fits_a_temperature_by_k_fold_and_predict_uses_it(tiny_run, tmp_path) -> None:
    folder = new_classes(tmp_path / "new", 9)
    out = tmp_path / "adapted"
    done = run_cli("adapt", "--shots", "5", str(folder), "--model", str(tiny_run),
                   "--method", "simpleshot", "--out", str(out), "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "calibration: temperature" in done.stdout and "5-fold" in done.stdout
    doc = json.loads((out / "adapted.json").read_text())
    c = doc["calibration"]
    assert c["fit"] == "k-fold" and c["folds"] == 5 and c["heldout"] == 12
    assert c["temperature"] > 0 and c["ece_before"] is not None and c["brier_after"] >= 0
    assert (out / "reliability.png").stat().st_size > 1000
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and "reliability.png" in card and "ECE" in card
    model = Adapted.load(out)
    assert model.temperature == pytest.approx(c["temperature"])
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    expected = torch.softmax(model.logits(images) / c["temperature"], dim=1)
    assert torch.allclose(model.probabilities(images), expected)
    if c["temperature"] != 1.0:
        assert not torch.allclose(torch.softmax(model.logits(images), dim=1), expected)


def test_no_calibrate_and_one_shot_keep_temperature_one(tiny_run, tmp_path) -> None:
    base = BaseModel(tiny_run)
    folder = new_classes(tmp_path / "new", 4)
    off = base.adapt(folder, shots=3, method="simpleshot", calibrate=False)
    assert off.calibration["fit"] == "off" and off.temperature == 1.0
    assert off.calibration["ece_before"] == off.calibration["ece_after"]
    one = base.adapt(folder, shots=1, method="linear-probe")
    assert one.calibration["fit"] == "uncalibrated" and one.temperature == 1.0


def test_a_temperature_that_hurt_held_out_images_is_said_so() -> None:
    from fewshot.adapt import calibration_line
    from fewshot.model_card import calibration_section

    record = {"fit": "k-fold", "folds": 3, "proxy": None, "temperature": 0.4, "heldout": 30,
              "ece_before": 0.187, "brier_before": 0.5, "brier_after": 0.55}
    worse, better = {**record, "ece_after": 0.218}, {**record, "ece_after": 0.1}
    assert "worse on held-out images: --no-calibrate" in calibration_line(worse)
    assert "worse on held-out" not in calibration_line(better)
    assert "made the held-out ECE worse" in "\n".join(calibration_section(worse))
    assert "worse" not in "\n".join(calibration_section(better))
    off = {**worse, "fit": "off", "temperature": 1.0}  # nothing was fitted to blame
    assert "worse on held-out" not in calibration_line(off)


def test_finetune_is_calibrated_through_the_linear_probe_folds(tiny_run, tmp_path) -> None:
    folder = new_classes(tmp_path / "new", 4)
    adapted = BaseModel(tiny_run).adapt(folder, shots=3, method="finetune:steps=2")
    assert adapted.calibration["fit"] == "k-fold-proxy"
    assert adapted.calibration["proxy"] == "linear-probe" and adapted.calibration["folds"] == 3


def test_maml_family_heads_refit_per_fold(tiny_run, tmp_path) -> None:
    folder = new_classes(tmp_path / "new", 4)
    run = write_run(tmp_path / "anil-run", head="fomaml")
    adapted = BaseModel(run).adapt(folder, shots=3)
    assert adapted.calibration["fit"] == "k-fold" and adapted.calibration["folds"] == 3


# ------------------------------------------------------------------ out of domain, units


def test_domain_statistics_separate_a_shifted_cloud() -> None:
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.normal(0, 1, (400, 16))).float() + 3
    stats = fit_domain(base)
    assert set(stats) == set(DOMAIN_KEYS)
    inside = mahalanobis(torch.nn.functional.normalize(base[:50] + 0.01, dim=1),
                         stats["domain_mean"], stats["domain_precision"])
    shifted = torch.from_numpy(rng.normal(0, 1, (50, 16))).float() - 3
    outside = mahalanobis(torch.nn.functional.normalize(shifted, dim=1),
                          stats["domain_mean"], stats["domain_precision"])
    threshold = float(stats["domain_threshold"])
    assert inside.median() < threshold < outside.min()
    # the threshold is the 95th percentile of scores the fit did not see
    assert float((stats["domain_base_scores"] <= threshold).double().mean()) >= 0.95


def test_support_reference_uses_heldout_images_when_there_are_enough() -> None:
    support = torch.eye(4)
    few = support_threshold(support, torch.empty(0, 4))
    assert few["threshold"] == pytest.approx(1.0)  # orthogonal supports: distance 1
    assert "leave-one-out" in few["reference"]
    heldout = support.repeat(5, 1) + 0.1
    many = support_threshold(support, heldout)
    assert "held-out" in many["reference"] and many["threshold"] < 0.05
    assert torch.allclose(nearest_support(support, support), torch.zeros(4), atol=1e-6)


def test_training_writes_the_domain_statistics(tmp_path) -> None:
    from conftest import write_tiny_task

    task = write_tiny_task(tmp_path)
    done = run_cli("pretrain", "--set", f"data.task={task}", "--set", "model.backbone=conv4",
                   "--set", "model.backbone_args={channels: 8}", "--set", "train.epochs=1",
                   "--set", "train.batch_size=16", "--no-wandb", "--out",
                   str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = RunDir(tmp_path / "run").load_prototypes()
    assert stored.domain is not None and stored.domain["domain_precision"].shape == (
        stored.base_mean.shape[0], stored.base_mean.shape[0])


def test_a_run_without_domain_statistics_skips_the_check_with_a_note(tiny_run, tmp_path,
                                                                    capsys) -> None:
    assert Prototypes.load(RunDir(tiny_run).prototypes_path).domain is None
    adapted = BaseModel(tiny_run).adapt(new_classes(tmp_path / "new", 6), shots=3,
                                        method="simpleshot")
    err = capsys.readouterr().err
    assert "out-of-domain check" in err and "skipped" in err and len(
        [line for line in err.splitlines() if "domain" in line]) == 1
    assert adapted.domain["base"] is None and adapted.domain["out_of_domain"] is False
    assert adapted.domain["support"]["threshold"] is not None


# ------------------------------------------------------------------ out of domain, real data


def other_images(root: Path, per_class: int = 8) -> Path:
    """Drawings that are not cells: stripes, checkerboards and rings on plain colours."""
    rng = np.random.default_rng(0)
    for kind in ("stripes", "checker", "rings"):
        for i in range(per_class):
            img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            w = int(rng.integers(3, 10))
            if kind == "stripes":
                for x in range(0, 64, 2 * w):
                    draw.rectangle([x, 0, x + w, 63], fill=colour)
            elif kind == "checker":
                for x in range(0, 64, w):
                    for y in range(0, 64, w):
                        if (x // w + y // w) % 2:
                            draw.rectangle([x, y, x + w, y + w], fill=colour)
            else:
                for r in range(4, 32, w):
                    draw.ellipse([32 - r, 32 - r, 32 + r, 32 + r], outline=colour, width=2)
            (root / kind).mkdir(parents=True, exist_ok=True)
            img.save(root / kind / f"{kind}_{i}.png")
    return root


def test_the_domain_check_is_of_the_encoder_before_its_alignment(tmp_path) -> None:
    """Batch-norm statistics re-estimated on other images move every feature away from the
    base domain's statistics (measured with the trained ones): the check must not then call
    blood cells out of domain for blood-v1, nor send the user to --unlabeled again."""
    cells = tmp_path / "cells"
    assert run_cli("data", "sample", str(cells), cwd=tmp_path).returncode == 0
    drawings = other_images(tmp_path / "drawings")
    done = run_cli("adapt", "--shots", "5", str(cells), "--model", "blood-v1", "--method",
                   "simpleshot", "--unlabeled", str(drawings), "--out", str(tmp_path / "a"),
                   "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "out of domain" not in done.stderr
    doc = json.loads((tmp_path / "a" / "adapted.json").read_text())
    assert doc["alignment"]["batchnorm_layers"] > 0
    base = doc["domain"]["base"]
    assert base["before_alignment"] is True and doc["domain"]["out_of_domain"] is False
    assert base["images"] == len(doc["support"])  # the support, as the trained encoder saw it
    assert "before its alignment to the unlabeled images" in (
        tmp_path / "a" / "MODEL_CARD.md").read_text()


def test_blood_v1_warns_for_drawings_and_not_for_blood_cells(tmp_path) -> None:
    cells = tmp_path / "cells"
    assert run_cli("data", "sample", str(cells), cwd=tmp_path).returncode == 0
    inside = run_cli("adapt", "--shots", "5", str(cells), "--model", "blood-v1",
                     "--method", "simpleshot", "--out", str(tmp_path / "a-cells"),
                     "--no-wandb", cwd=tmp_path)
    assert inside.returncode == 0, inside.stderr
    assert "out of domain" not in inside.stderr
    cells_doc = json.loads((tmp_path / "a-cells" / "adapted.json").read_text())
    assert cells_doc["domain"]["out_of_domain"] is False

    drawings = other_images(tmp_path / "drawings")
    outside = run_cli("adapt", "--shots", "5", str(drawings), "--model", "blood-v1",
                      "--method", "simpleshot", "--out", str(tmp_path / "a-drawings"),
                      "--no-wandb", cwd=tmp_path)
    assert outside.returncode == 0, outside.stderr
    warnings = [line for line in outside.stderr.splitlines() if "out of domain" in line]
    assert len(warnings) == 1 and "Mahalanobis" in warnings[0] and "--unlabeled" in warnings[0]
    doc = json.loads((tmp_path / "a-drawings" / "adapted.json").read_text())
    base = doc["domain"]["base"]
    assert doc["domain"]["out_of_domain"] is True and base["score"] > base["threshold"]
    assert base["score"] > cells_doc["domain"]["base"]["score"]
    assert "out of domain" in (tmp_path / "a-drawings" / "MODEL_CARD.md").read_text()

    # predict: drawings are out of the cells' support distribution, support files flagged
    predicted = run_cli("predict", str(tmp_path / "a-cells"), str(drawings / "stripes"),
                        str(cells / "monocyte"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    header = predicted.stdout.splitlines()[0].split(",")
    assert header[-4:] == ["ood_score", "out_of_domain", "in_support", "error"]
    assert not any(name.startswith("p_") for name in header[-4:])
    stripes = [r for r in rows if "stripes" in r["path"]]
    monocytes = [r for r in rows if "monocyte" in r["path"]]
    assert all(r["out_of_domain"] == "true" for r in stripes)
    assert sum(r["out_of_domain"] == "false" for r in monocytes) > 0.8 * len(monocytes)
    support = {s["path"] for s in cells_doc["support"] if s["class"] == "monocyte"}
    flagged = {Path(r["path"]).name for r in monocytes if r["in_support"] == "true"}
    assert flagged == {Path(p).name for p in support} and len(flagged) == 5
    assert min(float(r["ood_score"]) for r in stripes) > np.median(
        [float(r["ood_score"]) for r in monocytes if r["in_support"] == "false"])


# ------------------------------------------------------------------ ensembles


def test_an_ensemble_averages_calibrated_members_and_reloads(tiny_run, tmp_path) -> None:
    folder = new_classes(tmp_path / "new", 8)
    other = write_run(tmp_path / "other-run", head="simpleshot")
    out = tmp_path / "ensemble"
    done = run_cli("adapt", "--shots", "4", str(folder), "--model", str(tiny_run),
                   "--model", str(other.path), "--method", "protonet", "--method",
                   "linear-probe", "--out", str(out), "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ensemble of 2 adapted models" in done.stdout
    doc = json.loads((out / "adapted.json").read_text())
    assert doc["members"] == ["members/0", "members/1"] and doc["method"] == "ensemble"
    assert isinstance(doc["metrics"]["heldout"], int) and doc["metrics"]["heldout"] == 12
    assert [m["method"] for m in doc["metrics"]["members"]] == ["protonet", "linear-probe"]
    assert doc["calibration"]["fit"] == "members" and doc["calibration"]["ece_after"] >= 0
    for i in (0, 1):
        member = json.loads((out / "members" / str(i) / "adapted.json").read_text())
        assert member["calibration"]["fit"] == "k-fold"
        assert member["support"] == doc["support"]  # the same support images
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Ensemble" in card and "members/1" in card and "linear-probe" in card

    ensemble = Adapted.load(out)
    members = [Adapted.load(out / "members" / str(i)) for i in (0, 1)]
    images = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8)
    expected = (members[0].probabilities(images) + members[1].probabilities(images)) / 2
    assert torch.allclose(ensemble.probabilities(images), expected, atol=1e-6)
    assert not torch.allclose(expected, members[0].probabilities(images), atol=1e-3)

    predicted = run_cli("predict", str(out), str(folder / "alpha"), "--format", "json",
                        cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert len(rows) == 8 and sum(r["in_support"] for r in rows) == 4
    assert all(abs(sum(r[f"p_{c}"] for c in ("alpha", "beta", "gamma")) - 1) < 1e-5
               for r in rows)


def test_ensemble_members_must_pair_up_and_agree(tiny_run, tmp_path) -> None:
    folder = new_classes(tmp_path / "new", 5)
    done = run_cli("adapt", "--shots", "3", str(folder), "--model", str(tiny_run), "--model",
                   str(tiny_run), "--model", str(tiny_run), "--method", "protonet",
                   "--method", "simpleshot", "--no-wandb", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--method do not pair up" in done.stderr
    member = BaseModel(tiny_run).adapt(folder, shots=3, method="protonet")
    from fewshot.adapted import Ensemble
    from fewshot.errors import UsageError

    with pytest.raises(UsageError, match="at least two"):
        Ensemble([member])


def test_evaluate_ensemble_row_is_the_mean_of_the_pairs(tmp_path) -> None:
    from conftest import write_tiny_task
    from fewshot.evaluate import evaluate

    task = write_tiny_task(tmp_path)
    run = write_run(tmp_path / "run")
    result = evaluate([str(run.path), "pixels"], ["protonet", "simpleshot"], task, ways=2,
                      shots=2, queries=3, episodes=12, device="cpu", ensemble=True,
                      quiet=True)
    rows = result["results"]
    assert [r["model"] for r in rows] == [str(run.path), "pixels", "ensemble"]
    assert rows[2]["episodes"] == 12 and rows[2]["protocol"] == "inductive"
    assert rows[2]["head"].startswith("mean(")
    pairs = [(p["reference"], p["other"]) for p in result["paired"]]
    ensemble_label = f"ensemble + {rows[2]['head']}"
    assert (f"{run.path} + protonet", ensemble_label) in pairs
    assert ("pixels + simpleshot", ensemble_label) in pairs
    # a pair averaged with itself answers exactly as the pair does
    twice = evaluate([str(run.path)], ["protonet", "protonet"], task, ways=2, shots=2,
                     queries=3, episodes=12, device="cpu", ensemble=True, quiet=True)
    assert twice["results"][2]["per_episode_accuracy"] == \
        twice["results"][0]["per_episode_accuracy"] == rows[0]["per_episode_accuracy"]
    with pytest.raises(Exception, match="at least two"):
        evaluate([str(run.path)], ["protonet"], task, ways=2, shots=2, queries=3, episodes=2,
                 device="cpu", ensemble=True, quiet=True)
