"""Unlabeled images of the target domain: finding them in any layout, refusing any that
are measured images (path, content, near-duplicate), and test-time alignment (batch-norm
statistics and the centring mean re-estimated on them) in `evaluate` and `adapt`."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_adapt import write_run
from test_neardup import crop, reencoded, smear

from conftest import make_folder, run_cli, write_image, write_tiny_task
from fewshot.alignment import align_head, reestimate_batchnorm
from fewshot.data import cache
from fewshot.data.folders import load_tensor
from fewshot.data.images import Normalize
from fewshot.data.unlabeled import ANALYSIS_SIZE, find_unlabeled, refuse_overlap
from fewshot.errors import DataError, UsageError
from fewshot.features import embed
from fewshot.methods import build_head
from fewshot.methods.common import mmd, power_transform, transform_features, whitening_matrix
from fewshot.models import build_backbone

CPU = torch.device("cpu")


def images(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    shifted = rng.integers(0, 256, (count, 3, size, size)) // 2 + 100  # another "domain"
    return torch.from_numpy(shifted.astype(np.uint8))


def test_batchnorm_statistics_are_those_of_the_unlabeled_images():
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8).eval()
    batch = images(40)
    normalize = Normalize()
    inputs = {}
    layers = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda m, x, y: inputs.__setitem__(m, x[0].detach()))
             for m in layers]
    reference = copy.deepcopy(encoder).train()  # batch statistics at every layer
    with torch.no_grad():
        reference(normalize(batch))
    expected = {i: (inputs[m].mean((0, 2, 3)), inputs[m].var((0, 2, 3), correction=1))
                for i, m in enumerate([m for m in reference.modules()
                                       if isinstance(m, torch.nn.BatchNorm2d)])}
    for h in hooks:
        h.remove()
    before = embed(encoder, batch, normalize, CPU)
    assert reestimate_batchnorm(encoder, batch, normalize, CPU, batch_size=64) == 4
    assert not encoder.training and all(m.momentum == 0.1 for m in layers)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(layer.running_mean, expected[i][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.running_var, expected[i][1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(before, embed(encoder, batch, normalize, CPU))
    # in batches: the running mean is the average of the batch means (equal batches)
    again = build_backbone("conv4", image_size=16, channels=8)
    again.load_state_dict(encoder.state_dict())
    reestimate_batchnorm(again, batch, normalize, CPU, batch_size=10)
    first = next(m for m in again.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(first.running_mean, layers[0].running_mean, atol=1e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("power", [None, 0.5])
def test_centring_mean_becomes_the_unlabeled_mean_feature(power):
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8)
    head = build_head("simpleshot", encoder, base_mean=torch.zeros(encoder.feature_dim),
                      power=power, base_features=torch.rand(5, encoder.feature_dim))
    batch = images(30, seed=3)
    record = align_head(head, batch, Normalize(), CPU)
    assert record == {"images": 30, "batchnorm_layers": 4, "batchnorm": "re-estimated",
                      "centred": True, "whitened": False}
    features = embed(head.encoder, batch, Normalize(), CPU)
    torch.testing.assert_close(head.base_mean, power_transform(features, power).mean(0))


def test_keep_batchnorm_moves_only_the_centre():
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8)
    head = build_head("simpleshot", encoder, base_mean=torch.zeros(encoder.feature_dim))
    trained = {k: v.clone() for k, v in head.encoder.state_dict().items()}
    batch = images(30, seed=3)
    record = align_head(head, batch, Normalize(), CPU, keep_batchnorm=True)
    assert record == {"images": 30, "batchnorm_layers": 0, "batchnorm": "kept",
                      "centred": True, "whitened": False}
    for key, value in head.encoder.state_dict().items():  # running statistics untouched
        torch.testing.assert_close(value, trained[key], msg=key)
    # the centre is the unlabeled mean under the trained statistics, not the base mean
    features = embed(head.encoder, batch, Normalize(), CPU)
    torch.testing.assert_close(head.base_mean, features.mean(0))
    assert head.base_mean.abs().sum() > 0
    realigned = copy.deepcopy(head)
    align_head(realigned, batch, Normalize(), CPU)  # the default re-estimates them
    assert not torch.allclose(realigned.base_mean, head.base_mean)


def test_whitening_matrix_whitens_and_shrinks_towards_the_identity():
    torch.manual_seed(0)
    mixing = torch.randn(5, 5)
    features = torch.randn(4000, 5) @ mixing + 3  # correlated, off-centre
    exact = whitening_matrix(features, shrinkage=0)
    torch.testing.assert_close(exact, exact.T)
    centred = features - features.mean(0)
    torch.testing.assert_close(torch.cov((centred @ exact).T), torch.eye(5), atol=1e-3,
                               rtol=1e-3)
    # shrinkage: each eigenvalue l of the covariance becomes l / (l + s * mean(l))
    values = torch.linalg.eigvalsh(torch.cov(centred.T).double())
    shrunk = torch.linalg.eigvalsh(torch.cov((centred @ whitening_matrix(features, 0.1)).T))
    torch.testing.assert_close(shrunk.double(), values / (values + 0.1 * values.mean()),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(whitening_matrix(torch.ones(10, 3)), torch.eye(3))


def test_whiten_sets_the_heads_whitening_and_refuses_heads_without_one():
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8)
    batch = images(40, seed=3)
    for name in ("simpleshot", "linear-probe", "tim", "tim-probe"):
        head = build_head(name, copy.deepcopy(encoder), base_mean=torch.zeros(encoder.feature_dim))
        record = align_head(head, batch, Normalize(), CPU, keep_batchnorm=True, whiten=True)
        assert record["whitened"] and record["batchnorm"] == "kept"
        features = embed(head.encoder, batch, Normalize(), CPU)
        torch.testing.assert_close(head.whitening, whitening_matrix(features))
        expected = transform_features(features, None, features.mean(0), head.whitening)
        if name == "simpleshot":
            torch.testing.assert_close(head.eval().embed(Normalize()(batch)), expected, atol=1e-5,
                                       rtol=1e-4)
        # whitened unlabeled features have (shrunk) equal spread in every direction
        spread = torch.linalg.eigvalsh(torch.cov(((features - features.mean(0))
                                                  @ head.whitening).T))
        assert spread.max() <= 1 + 1e-4
    protonet = build_head("protonet", copy.deepcopy(encoder))
    with pytest.raises(UsageError, match="does not whiten"):
        align_head(protonet, batch, Normalize(), CPU, whiten=True)


def test_unlabeled_folders_in_any_layout(tmp_path, capsys):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    for i in range(3):
        write_image(flat / f"{i}.png", rng)
    write_image(tmp_path / "nested" / "a" / "b" / "deep.jpg", rng)
    (flat / "notes.txt").write_text("not an image")
    (flat / "broken.png").write_bytes(b"not a png")
    found = find_unlabeled([flat, tmp_path / "nested"])
    assert [p.name for p in found.paths] == ["0.png", "1.png", "2.png", "deep.jpg"]
    assert "broken.png" in capsys.readouterr().err
    assert len(found.records()) == 4 and len(found.records()[0]["sha256"]) == 64
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        find_unlabeled([tmp_path / "empty"])
    with pytest.raises(UsageError):
        find_unlabeled([tmp_path / "missing"])


def test_unlabeled_images_are_decoded_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for i in range(4):
        write_image(tmp_path / "u" / f"{i}.png", rng, size=40)
    found = find_unlabeled([tmp_path / "u"])

    def decode_again(*args, **kwargs):
        raise AssertionError("decoded a second time")

    monkeypatch.setattr(cache, "decode_into", decode_again)
    pixels = found.images(ANALYSIS_SIZE)  # what the near-duplicate check reads
    expected = torch.stack([torch.from_numpy(load_tensor(p, ANALYSIS_SIZE))
                            for p in found.paths])
    assert torch.equal(pixels, expected)
    with pytest.raises(AssertionError, match="second time"):
        found.images(32)  # another size is decoded (here: refused) as usual


def test_overlap_is_refused_by_path_content_and_near_duplicate(tmp_path):
    measured = []
    for i in range(6):
        path = tmp_path / "measured" / f"m{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop(smear(i), 40, 40).save(path)
        measured.append(path)
    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(6):
        crop(smear(100 + i), 40, 40).save(clean / f"u{i}.png")
    refuse_overlap(find_unlabeled([clean]), measured, "the evaluated split")  # passes

    def refused(folder: Path) -> str:
        with pytest.raises(UsageError) as info:
            refuse_overlap(find_unlabeled([clean, folder]), measured, "the evaluated split")
        return str(info.value)

    same = refused(tmp_path / "measured")  # the same files
    assert same.startswith("unlabeled image is an image of the evaluated split") and \
        "m0.png" in same
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(measured[3], copies / "renamed.png")
    assert "has the content of" in refused(copies)
    near = tmp_path / "near"
    near.mkdir()
    reencoded(crop(smear(4), 44, 37)).save(near / "shifted.jpg")
    message = refused(near)
    assert "near-duplicate" in message and "m4.png" in message and "shifted.jpg" in message


def task_and_target_domain(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny task, and a flat folder of 12 unlabeled images of another colour."""
    unlabeled = tmp_path / "target-domain"
    rng = np.random.default_rng(5)
    for i in range(12):
        write_image(unlabeled / f"u{i}.png", rng, colour=[200, 30, 30])
    return write_tiny_task(tmp_path), unlabeled


def test_evaluate_aligns_to_unlabeled_images_and_refuses_the_evaluated_split(tmp_path):
    task, unlabeled = task_and_target_domain(tmp_path)
    common = ["--model", "random:conv4", "--head", "simpleshot", "--task", str(task),
              "--ways", "2", "--shots", "1", "--queries", "3", "--episodes", "8", "--quiet"]
    out = run_cli("evaluate", *common, "--unlabeled", str(unlabeled),
                  "--json", str(tmp_path / "aligned.json"))
    assert out.returncode == 0, out.stderr
    aligned = json.loads((tmp_path / "aligned.json").read_text())
    assert aligned["unlabeled"]["images"] == 12
    hashes = sorted(hashlib.sha256(f.read_bytes()).hexdigest()
                    for f in unlabeled.rglob("*") if f.is_file())
    assert aligned["unlabeled"]["sha256"] == hashlib.sha256("".join(hashes).encode()).hexdigest()
    assert aligned["results"][0]["alignment"] == {"images": 12, "batchnorm_layers": 4,
                                                  "batchnorm": "re-estimated", "centred": True,
                                                  "whitened": False}
    assert aligned["unlabeled"]["batchnorm"] == "re-estimated"
    kept = run_cli("evaluate", *common, "--unlabeled", str(unlabeled), "--keep-batchnorm",
                   "--json", str(tmp_path / "kept.json"))
    assert kept.returncode == 0, kept.stderr
    kept_doc = json.loads((tmp_path / "kept.json").read_text())
    assert kept_doc["unlabeled"]["batchnorm"] == "kept"
    assert kept_doc["results"][0]["alignment"]["batchnorm_layers"] == 0
    whitened = run_cli("evaluate", *common, "--unlabeled", str(unlabeled), "--keep-batchnorm",
                       "--whiten", "--json", str(tmp_path / "whitened.json"))
    assert whitened.returncode == 0, whitened.stderr
    whitened_doc = json.loads((tmp_path / "whitened.json").read_text())
    assert whitened_doc["unlabeled"]["whitened"] is True
    assert whitened_doc["results"][0]["alignment"]["whitened"] is True
    alone = run_cli("evaluate", *common, "--whiten")
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "error: nothing to align without --unlabeled (--whiten): pass --unlabeled "
        "DIR, or drop --whiten"]
    alone = run_cli("evaluate", *common, "--keep-batchnorm")
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "error: nothing to align without --unlabeled (--keep-batchnorm): pass --unlabeled "
        "DIR, or drop --keep-batchnorm"]
    plain = run_cli("evaluate", *common, "--json", str(tmp_path / "plain.json"))
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain.json").read_text())["unlabeled"] is None
    assert "alignment" not in json.loads((tmp_path / "plain.json").read_text())["results"][0]
    leak = run_cli("evaluate", *common, "--unlabeled", str(tmp_path / "data" / "ds" / "c7"))
    assert leak.returncode == 2
    *listed, error = leak.stderr.strip().splitlines()
    assert error.startswith("error: unlabeled image is an image of the evaluated split "
                            "(novel) (10 unlabeled images in all, listed above)")
    assert len(listed) == 10 and all(" is " in line for line in listed)


def test_adapt_records_and_keeps_the_alignment(tmp_path):
    run = write_run(tmp_path / "run").path
    new = make_folder(tmp_path / "new", {"alpha": 6, "beta": 6}, size=16, seed=1)
    unlabeled = tmp_path / "unlabeled"
    rng = np.random.default_rng(9)
    for i in range(10):
        write_image(unlabeled / "any" / f"u{i}.png", rng, colour=[10, 200, 90])
    out = run_cli("adapt", "--shots", "2", str(new), "--model", str(run), "--method",
                  "simpleshot", "--unlabeled", str(unlabeled), "--out", str(tmp_path / "a"),
                  "--no-wandb", "--quiet")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "a" / "adapted.json").read_text())
    assert len(doc["unlabeled"]) == 10 and doc["alignment"]["batchnorm_layers"] == 4
    assert doc["alignment"]["folders"] == [str(unlabeled)]
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "Aligned to 10 unlabeled images" in card and f"--unlabeled {unlabeled}" in card
    # the adapted weights carry the re-estimated statistics and centre
    from fewshot.assembly import load_model, model_transform
    from fewshot.data.images import decode_all

    head, meta = load_model(run, head="simpleshot")
    align_head(head, decode_all(sorted(unlabeled.rglob("*.png")), 16, quiet=True),
               model_transform(meta), CPU)
    saved = load_file(tmp_path / "a" / "adapted.safetensors")
    torch.testing.assert_close(saved["base_mean"], head.base_mean)
    first = next(k for k in saved if k.endswith("running_mean"))
    torch.testing.assert_close(saved[first], head.state_dict()[first])
    predicted = run_cli("predict", str(tmp_path / "a"), str(new / "alpha"), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    kept = run_cli("adapt", "--shots", "2", str(new), "--model", str(run), "--method",
                   "simpleshot", "--unlabeled", str(unlabeled), "--keep-batchnorm",
                   "--out", str(tmp_path / "k"), "--no-wandb", "--quiet")
    assert kept.returncode == 0, kept.stderr
    kept_doc = json.loads((tmp_path / "k" / "adapted.json").read_text())
    assert kept_doc["alignment"]["batchnorm"] == "kept"
    kept_card = (tmp_path / "k" / "MODEL_CARD.md").read_text()
    assert "batch-norm statistics kept as trained" in kept_card
    assert f"--unlabeled {unlabeled} --keep-batchnorm" in kept_card
    saved_kept = load_file(tmp_path / "k" / "adapted.safetensors")
    plain_head, _ = load_model(run, head="simpleshot")  # the trained statistics, as saved
    torch.testing.assert_close(saved_kept[first], plain_head.state_dict()[first])
    white = run_cli("adapt", "--shots", "2", str(new), "--model", str(run), "--method",
                    "linear-probe", "--unlabeled", str(unlabeled), "--keep-batchnorm",
                    "--whiten", "--out", str(tmp_path / "w"), "--no-wandb", "--quiet")
    assert white.returncode == 0, white.stderr
    assert json.loads((tmp_path / "w" / "adapted.json").read_text())["alignment"]["whitened"]
    white_card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "--keep-batchnorm --whiten" in white_card
    assert "centred on their mean feature and whitened with their covariance" in white_card
    saved_white = load_file(tmp_path / "w" / "adapted.safetensors")
    probe, _ = load_model(run, head="linear-probe")
    align_head(probe, decode_all(sorted(unlabeled.rglob("*.png")), 16, quiet=True),
               model_transform(meta), CPU, keep_batchnorm=True, whiten=True)
    torch.testing.assert_close(saved_white["whitening"], probe.whitening)
    from fewshot.adapted import Adapted

    reloaded = Adapted.load(tmp_path / "w")  # the whitening comes back with the weights
    torch.testing.assert_close(reloaded.head.whitening, probe.whitening)
    refused = run_cli("adapt", "--shots", "2", str(new), "--model", str(run), "--method",
                      "protonet", "--unlabeled", str(unlabeled), "--whiten",
                      "--out", str(tmp_path / "p"), "--no-wandb", "--quiet")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: method 'protonet' does not whiten its features (--whiten)")
    for bad, option in ((["--unlabeled", str(new / "alpha")], "adapt folder"),
                        (["--unlabeled", str(unlabeled), "--cv"], "--cv")):
        refused = run_cli("adapt", "--shots", "2", str(new), "--model", str(run), *bad,
                          "--out", str(tmp_path / "b"), "--no-wandb", "--quiet")
        assert refused.returncode == 2, refused.stderr
        error = refused.stderr.strip().splitlines()[-1]
        assert error.startswith("error: ") and option in error, refused.stderr


def test_mmd_probe_draws_its_boundaries_towards_the_unlabeled_images():
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8).eval()
    support, labels = images(6, seed=1), torch.tensor([0, 0, 0, 1, 1, 1])
    unlabeled = images(40, seed=2)

    def fitted(**options):
        head = build_head("linear-probe", encoder, base_mean=torch.zeros(encoder.feature_dim),
                          **options).eval()
        record = align_head(head, unlabeled, Normalize(), CPU)
        head.process_support_set(Normalize()(support), labels)
        return head, record

    plain, plain_record = fitted()
    assert "mmd_images" not in plain_record and plain.unlabeled_features.shape[0] == 40
    aligned, record = fitted(mmd_weight=5.0, mmd_images=30)
    assert record["mmd_images"] == 30
    again, _ = fitted(mmd_weight=5.0, mmd_images=30)
    torch.testing.assert_close(aligned.linear.weight, again.linear.weight)  # seeded sample
    assert not torch.allclose(aligned.linear.weight, plain.linear.weight)
    target = aligned.align_features()
    assert target.shape[0] == 30
    with torch.no_grad():
        source = plain.embed(Normalize()(support))
        gap = {name: mmd(head.linear(source), head.linear(target)).item()
               for name, head in (("plain", plain), ("aligned", aligned))}
    assert gap["aligned"] < gap["plain"]
    # a weight of zero is the plain probe, whatever unlabeled features it holds
    zero, _ = fitted(mmd_weight=0.0)
    torch.testing.assert_close(zero.linear.weight, plain.linear.weight)
    lonely = build_head("linear-probe", encoder, mmd_weight=1.0)
    with pytest.raises(UsageError, match="--unlabeled"):
        lonely.process_support_set(Normalize()(support), labels)
    with pytest.raises(UsageError, match="mmd_weight"):
        build_head("linear-probe", encoder, mmd_weight=-1.0)


def test_mmd_probe_from_the_command_line(tmp_path):
    task, unlabeled = task_and_target_domain(tmp_path)
    common = ["--model", "random:conv4", "--head", "linear-probe:mmd_weight=1", "--task",
              str(task), "--ways", "2", "--shots", "1", "--queries", "3", "--episodes", "4",
              "--quiet"]
    missing = run_cli("evaluate", *common)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: linear-probe:mmd_weight")
    out = run_cli("evaluate", *common, "--unlabeled", str(unlabeled),
                  "--json", str(tmp_path / "mmd.json"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "mmd.json").read_text())["results"][0]
    assert result["alignment"]["mmd_images"] == 12
    run = write_run(tmp_path / "run").path
    new = make_folder(tmp_path / "new", {"alpha": 6, "beta": 6}, size=16, seed=1)
    adapt = ["adapt", "--shots", "2", str(new), "--model", str(run), "--method",
             "linear-probe:mmd_weight=1", "--no-wandb", "--quiet"]
    refused = run_cli(*adapt, "--out", str(tmp_path / "b"))
    assert refused.returncode == 2 and "--unlabeled" in refused.stderr.strip().splitlines()[-1]
    done = run_cli(*adapt, "--unlabeled", str(unlabeled), "--out", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "a" / "adapted.json").read_text())
    assert doc["alignment"]["mmd_images"] == 12
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "probe fitted with an MMD term on 12 of them" in card
    predicted = run_cli("predict", str(tmp_path / "a"), str(new / "alpha"), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
