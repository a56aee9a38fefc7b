"""`fewshot adapt` / `fewshot predict` and the Python API, on tiny synthetic folders and a
tiny real run directory (Conv4 with 8 channels at 16 px) written by the tests."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fewshot
from conftest import make_folder, run_cli
from fewshot.adapt import BaseModel, select_support
from fewshot.adapted import Adapted
from fewshot.data.folders import scan_folder
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD, Normalize, decode_all
from fewshot.errors import DataError, UsageError
from fewshot.features import embed
from fewshot.methods import build_head
from fewshot.metrics import wilson_interval
from fewshot.models import build_backbone
from fewshot.predict import predict_command
from fewshot.run import RunDir
from fewshot.schema import FORMAT_VERSION, ModelMeta, Prototypes

SIZE = 16


def write_run(path: Path, kind: str = "meta-train", head: str = "protonet") -> RunDir:
    """A run directory as meta-train writes it: random Conv4 weights, and base-class
    prototypes embedded from synthetic images of two base classes."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=SIZE, channels=8)
    model = build_head(head, encoder)
    path.mkdir(parents=True)
    run = RunDir(path)
    run.save_model(model.state_dict(), ModelMeta(**{
        "kind": kind, "task": "synthetic", "backbone": "conv4",
        "backbone_args": {"channels": 8}, "image_size": SIZE,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "feature_dim": encoder.feature_dim, "head": head, "head_options": {},
        "classes": {"base": ["base-one", "base-two"], "val": [], "novel": []}, "metrics": {}}))
    base = scan_folder(base_folder(path.parent / "base-data", 6, seed=7))
    features = embed(encoder, decode_all(base.paths, SIZE, quiet=True), Normalize(),
                     torch.device("cpu"))
    labels = torch.from_numpy(base.labels)
    prototypes = torch.stack([features[labels == c].mean(0) for c in range(2)])
    run.save_prototypes(Prototypes(base.classes, prototypes, features.mean(0)))
    return run


def write_pixels_run(path: Path) -> RunDir:
    """A pretrain run directory of the parameter-free `pixels` encoder (SimpleShot)."""
    encoder = build_backbone("pixels", image_size=SIZE)
    run = RunDir(path)
    run.path.mkdir()
    run.save_model(build_head("simpleshot", encoder).state_dict(), ModelMeta(**{
        "kind": "pretrain", "task": "synthetic", "backbone": "pixels", "backbone_args": {},
        "image_size": SIZE, "normalization": {"mean": list(IMAGENET_MEAN),
                                              "std": list(IMAGENET_STD)},
        "feature_dim": encoder.feature_dim, "head": "simpleshot", "head_options": {},
        "classes": {"base": [], "val": [], "novel": []}, "metrics": {}}))
    return run


def base_folder(root: Path, count: int, seed: int) -> Path:
    """Images of the two base classes, tinted with make_folder's 4th and 5th colours so
    that they differ from the new classes (its 1st to 3rd)."""
    return make_folder(root, {"-": 0, "--": 0, "---": 0, "base-one": count,
                              "base-two": count}, size=SIZE, seed=seed)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "tiny").path


@pytest.fixture
def new_disease(tmp_path: Path) -> Path:
    # unequal counts; 'gamma' has fewer than 4 images
    return make_folder(tmp_path / "new_disease", {"alpha": 9, "beta": 7, "gamma": 3},
                       size=SIZE, seed=1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ end to end (CLI)

def test_adapt_and_predict_end_to_end(tmp_path, run_dir, new_disease):
    (new_disease / "beta" / "broken.png").write_bytes(b"not an image")
    (new_disease / "alpha" / "notes.txt").write_text("scan notes")
    out = tmp_path / "adapted"
    result = run_cli("adapt", "--shots", "4", str(new_disease), "--model", str(run_dir),
                     "--out", str(out), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "leave-out accuracy: 100.0% (8/8 held-out images; 95% CI" in result.stdout
    assert "class 'gamma' has only 3 readable image(s)" in result.stderr
    assert "broken.png" in result.stderr and "notes.txt" in result.stderr  # listed, skipped

    doc = json.loads((out / "adapted.json").read_text())
    assert doc["classes"] == ["alpha", "beta", "gamma"] and doc["method"] == "protonet"
    assert doc["seed"] == 3 and doc["shots"] == 4 and doc["format_version"] == FORMAT_VERSION
    assert doc["preprocessing"]["image_size"] == SIZE
    assert doc["base_model"]["sha256"] == sha256(run_dir / "model.safetensors")
    support = doc["support"]
    assert [s["class"] for s in support].count("gamma") == 3
    assert all(s["sha256"] == sha256(new_disease / s["path"]) for s in support)
    assert "beta/broken.png" not in {s["path"] for s in support}
    assert {Path(s["path"]).name for s in doc["skipped"]} == {"broken.png", "notes.txt"}
    metrics = doc["metrics"]
    assert metrics["heldout"] == 8 and metrics["accuracy"] == 1.0  # 5 alpha + 3 beta
    assert 0.6 < metrics["ci95"][0] < 1.0 and metrics["ci95"][1] == 1.0
    card = (out / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card and "Leave-out accuracy: **100.0%**" in card
    assert load_file(str(out / "adapted.safetensors"))["prototypes"].shape[0] == 3

    csv_run = run_cli("predict", str(out), str(new_disease / "beta"),
                      str(new_disease / "alpha" / "img_000.png"), "--top-k", "2")
    assert csv_run.returncode == 1  # broken.png failed; the others are still predicted
    rows = list(csv.DictReader(io.StringIO(csv_run.stdout)))
    assert list(rows[0]) == ["path", "prediction", "probability", "top1", "top1_probability",
                             "top2", "top2_probability", "p_alpha", "p_beta", "p_gamma",
                             "ood_score", "out_of_domain", "in_support", "error"]
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["prediction"] == "" and broken[0]["error"]
    assert "broken.png" not in broken[0]["error"]  # the path column names it, once
    assert "notes.txt: not an image file (by extension)" in result.stderr
    named = run_cli("predict", str(out), str(new_disease / "alpha" / "notes.txt"))
    assert named.returncode == 1  # a non-image named on purpose: adapt's words, one line
    assert "error: not an image file (by extension)" in named.stderr
    assert "Traceback" not in named.stderr
    good = [r for r in rows if not r["error"]]
    assert len(good) == 8
    assert [r["prediction"] for r in good] == ["beta"] * 7 + ["alpha"]
    for r in good:
        total = sum(float(r[f"p_{c}"]) for c in ("alpha", "beta", "gamma"))
        assert abs(total - 1) < 1e-4 and r["probability"] == r["top1_probability"]

    json_out = tmp_path / "pred.json"  # in-process: the command's body, as JSON
    failed = predict_command(out, [new_disease / "gamma"], out=json_out, fmt="json",
                             top_k=None, reject_below=None, quiet=True)
    assert failed == 0
    records = json.loads(json_out.read_text())
    assert [r["prediction"] for r in records] == ["gamma"] * 3
    assert set(records[0]) == {"path", "prediction", "probability", "p_alpha", "p_beta",
                               "p_gamma", "ood_score", "out_of_domain", "in_support", "error"}


# ------------------------------------------------------------------ Python API

def test_python_api_three_lines(run_dir, new_disease, tmp_path):
    model = fewshot.load(run_dir)
    adapted = model.adapt(new_disease, shots=5, out=tmp_path / "a")
    records = adapted.predict([new_disease / "gamma"])
    assert [r["prediction"] for r in records] == ["gamma"] * 3
    again = fewshot.load(tmp_path / "a")
    assert isinstance(again, Adapted) and again.classes == ["alpha", "beta", "gamma"]
    assert again.predict(new_disease / "gamma") == records


@pytest.mark.parametrize("method", ["protonet", "simpleshot", "finetune"])
def test_same_inputs_give_byte_identical_weights(run_dir, new_disease, tmp_path, method):
    model = BaseModel(run_dir)
    first = model.adapt(new_disease, shots=3, method=method, seed=5, out=tmp_path / "one")
    model.adapt(new_disease, shots=3, method=method, seed=5, out=tmp_path / "two")
    one = (tmp_path / "one" / "adapted.safetensors").read_bytes()
    assert one == (tmp_path / "two" / "adapted.safetensors").read_bytes()
    # the saved folder predicts exactly as the model in memory
    loaded = Adapted.load(tmp_path / "one")
    images = decode_all(scan_folder(new_disease).paths, SIZE, quiet=True)
    assert torch.equal(first.probabilities(images), loaded.probabilities(images))
    other = model.adapt(new_disease, shots=3, method=method, seed=6)
    assert ([s["path"] for s in other.provenance["support"]]
            != [s["path"] for s in first.provenance["support"]])


def test_linear_probe_round_trip(run_dir, new_disease, tmp_path):
    adapted = BaseModel(run_dir).adapt(new_disease, shots=3, method="linear-probe",
                                       out=tmp_path / "lp")
    loaded = Adapted.load(tmp_path / "lp")
    images = decode_all(scan_folder(new_disease).paths, SIZE, quiet=True)
    assert torch.equal(adapted.probabilities(images), loaded.probabilities(images))


def test_unequal_shots_take_what_each_class_has(run_dir, new_disease):
    adapted = BaseModel(run_dir).adapt(new_disease, shots=5)
    counts = {c: 0 for c in adapted.classes}
    for item in adapted.provenance["support"]:
        counts[item["class"]] += 1
    assert counts == {"alpha": 5, "beta": 5, "gamma": 3}
    per_class = adapted.metrics["per_class"]
    assert {c: s["heldout"] for c, s in per_class.items()} == {"alpha": 4, "beta": 2}
    assert "confusion" not in adapted.metrics  # gamma has no held-out image


def test_confusion_matrix_when_every_class_has_heldout_images(run_dir, tmp_path):
    folder = make_folder(tmp_path / "d", {"alpha": 6, "beta": 6}, size=SIZE, seed=2)
    metrics = BaseModel(run_dir).adapt(folder, shots=3).metrics
    assert metrics["confusion"]["matrix"] == [[3, 0], [0, 3]]


def test_keep_base_answers_base_classes_with_one_new_class(run_dir, tmp_path):
    folder = make_folder(tmp_path / "rare", {"alpha": 7}, size=SIZE, seed=3)
    with pytest.raises(DataError, match="only one class"):
        BaseModel(run_dir).adapt(folder, shots=5)
    adapted = BaseModel(run_dir).adapt(folder, shots=5, keep_base=True, out=tmp_path / "kb")
    assert adapted.classes == ["alpha", "base-one", "base-two"]
    assert adapted.metrics["heldout"] == 2 and adapted.metrics["accuracy"] == 1.0
    base_images = base_folder(tmp_path / "more-base", 2, seed=11) / "base-two"
    records = Adapted.load(tmp_path / "kb").predict(base_images)
    assert [r["prediction"] for r in records] == ["base-two", "base-two"]


def test_keep_base_rejects_a_non_feature_method(run_dir, tmp_path):
    folder = make_folder(tmp_path / "rare", {"alpha": 4}, size=SIZE)
    with pytest.raises(UsageError, match="--keep-base needs a feature-based method"):
        BaseModel(run_dir).adapt(folder, shots=2, keep_base=True, method="finetune")


def test_reject_below_answers_unknown(run_dir, new_disease):
    adapted = BaseModel(run_dir).adapt(new_disease, shots=3)
    plain = adapted.predict(new_disease)
    top = sorted(r["probability"] for r in plain)
    threshold = (top[len(top) // 2 - 1] + top[len(top) // 2]) / 2
    rejected = adapted.predict(new_disease, reject_below=threshold)
    for before, after in zip(plain, rejected, strict=True):
        expected = "unknown" if before["probability"] < threshold else before["prediction"]
        assert after["prediction"] == expected
    assert any(r["prediction"] == "unknown" for r in rejected)
    assert any(r["prediction"] != "unknown" for r in rejected)


def test_pretrain_run_defaults_to_simpleshot(tmp_path, new_disease):
    run = write_run(tmp_path / "pre", kind="pretrain", head="simpleshot")
    adapted = BaseModel(run.path).adapt(new_disease, shots=2)
    assert adapted.method == "simpleshot"
    base_mean = RunDir(run.path).load_prototypes().base_mean
    assert torch.equal(adapted.head.base_mean, base_mean)  # SimpleShot centring kept


def test_support_choice_is_seeded_per_class(tmp_path):
    folder = make_folder(tmp_path / "d", {"alpha": 10, "beta": 10}, size=SIZE)
    first = select_support(folder, 3, seed=0, image_size=SIZE)
    again = select_support(folder, 3, seed=0, image_size=SIZE)
    assert first.support == again.support
    make_folder(tmp_path / "d2", {"alpha": 10, "zeta": 4}, size=SIZE)
    other = select_support(tmp_path / "d2", 3, seed=0, image_size=SIZE)
    # alpha's support does not depend on which other classes are present
    assert ([p.name for p, lbl in first.support if lbl == 0]
            == [p.name for p, lbl in other.support if lbl == 0])


def test_class_without_readable_images_is_an_error(tmp_path):
    folder = make_folder(tmp_path / "d", {"alpha": 3}, size=SIZE)
    (folder / "beta").mkdir()
    (folder / "beta" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="class has no readable images"):
        select_support(folder, 2, seed=0, image_size=SIZE)
    (folder / "beta" / "x.png").unlink()
    with pytest.raises(DataError, match="class folder has no images"):
        select_support(folder, 2, seed=0, image_size=SIZE)


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-4 and abs(high - 0.7634) < 1e-4
    low, high = wilson_interval(10, 10)
    assert abs(low - 0.7225) < 1e-4 and high == 1.0


# ------------------------------------------------------------------ bad inputs (CLI)

def test_bad_inputs_one_line_errors_and_exit_codes(tmp_path, run_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = make_folder(tmp_path / "one", {"alpha": 4}, size=SIZE)
    two = make_folder(tmp_path / "two", {"alpha": 4, "beta": 4}, size=SIZE)
    cases = [
        (["adapt", "--shots", "5", str(empty), "--model", str(run_dir)], 1,
         "error: no class folders found"),
        (["adapt", "--shots", "5", str(one), "--model", str(run_dir)], 1,
         "error: only one class in the folder"),
        (["adapt", "--shots", "5", str(two), "--model", str(tmp_path / "nowhere")], 2,
         "error: run directory not found"),
        (["predict", str(two), str(two)], 2, "error: not an adapted model folder"),
    ]
    for args, code, message in cases:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_missing_folder_and_unknown_method_cannot_start(tmp_path, run_dir):
    two = make_folder(tmp_path / "two", {"alpha": 4, "beta": 4}, size=SIZE)
    with pytest.raises(UsageError, match="folder not found") as missing:
        BaseModel(run_dir).adapt(tmp_path / "missing", shots=5)
    with pytest.raises(UsageError, match=r"unknown method \(knn\)") as unknown:
        BaseModel(run_dir).adapt(two, shots=5, method="knn")
    assert missing.value.exit_code == unknown.value.exit_code == 2
    BaseModel(run_dir).adapt(two, shots=2, out=tmp_path / "adapted")
    with pytest.raises(UsageError, match="path not found") as gone:
        predict_command(tmp_path / "adapted", [two / "alpha", tmp_path / "nope.png"], None,
                        "csv", None, None, True)
    assert gone.value.exit_code == 2


def test_maml_family_head_adapts_saves_and_reloads(tmp_path, new_disease):
    run = write_run(tmp_path / "maml-run", head="maml")
    model = BaseModel(run.path)
    adapted = model.adapt(new_disease, shots=3, out=tmp_path / "one")  # default: maml
    model.adapt(new_disease, shots=3, out=tmp_path / "two")
    assert adapted.method == "maml" and adapted.metrics["heldout"] == 10
    one = (tmp_path / "one" / "adapted.safetensors").read_bytes()
    assert one == (tmp_path / "two" / "adapted.safetensors").read_bytes()
    loaded = Adapted.load(tmp_path / "one")
    images = decode_all(scan_folder(new_disease).paths, SIZE, quiet=True)
    assert torch.equal(adapted.probabilities(images), loaded.probabilities(images))


def test_a_parameter_free_encoder_adapts_and_predicts(tmp_path):
    """`pixels` has no parameters: prediction finds its device from the head's buffers."""
    run = write_pixels_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"a": 6, "b": 6}, size=SIZE)
    records = BaseModel(run.path).adapt(folder, shots=3).predict([folder])
    assert len(records) == 12 and all(r["error"] is None for r in records)
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in records) >= 10
