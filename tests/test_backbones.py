"""Backbones by name, feature shapes, and weights from files, run dirs and imagenet."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fewshot.errors import DataError, UsageError
from fewshot.models import build_backbone, last_stage_parameters
from fewshot.models.weights import load_weights, read_state_dict

SHAPES = [("conv4", 32, 256), ("resnet12", 32, 640), ("resnet18", 32, 512),
          ("pixels", 32, 768)]
SLOW_SHAPES = [("resnet50", 32, 2048), ("densenet121", 32, 1024), ("vgg16_bn", 32, 512),
               ("inception_v3", 75, 2048)]


def _check_shape(name: str, size: int, dim: int) -> None:
    for channels in (3, 1):
        model = build_backbone(name, image_size=size, in_channels=channels).eval()
        with torch.no_grad():
            features = model(torch.randn(2, channels, size, size))
        assert features.shape == (2, dim if channels == 3 or name != "pixels" else dim // 3)
        assert model.feature_dim == features.shape[1]


@pytest.mark.parametrize(("name", "size", "dim"), SHAPES)
def test_feature_shapes(name: str, size: int, dim: int) -> None:
    _check_shape(name, size, dim)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "dim"), SLOW_SHAPES)
def test_feature_shapes_large_backbones(name: str, size: int, dim: int) -> None:
    _check_shape(name, size, dim)


def test_conv4_pooling_before_relu_is_the_textbook_block() -> None:
    """conv / batch-norm / max-pool / ReLU equals the usual conv / batch-norm / ReLU /
    max-pool in value, gradient and second-order gradient (ReLU is monotonic)."""
    torch.manual_seed(0)
    model = build_backbone("conv4", image_size=32, channels=8).double().train()
    textbook = torch.nn.Sequential(*[torch.nn.Sequential(b[0], b[1], b[3], b[2])
                                     for b in model.features[:4]], torch.nn.Flatten())
    assert isinstance(model.features[0][2], torch.nn.MaxPool2d)
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    results = []
    for net in (model, textbook):
        params = list(net.parameters())
        out = net(images)
        grads = torch.autograd.grad(out.square().sum(), params, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), params)
        results.append([out, *grads, *second])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_inception_refuses_small_images() -> None:
    with pytest.raises(UsageError, match="at least 75 px"):
        build_backbone("inception_v3", image_size=64)


def test_unknown_backbone_and_option() -> None:
    with pytest.raises(UsageError, match="unknown backbone"):
        build_backbone("resnet7")
    with pytest.raises(UsageError, match="backbone_args"):
        build_backbone("resnet12", image_size=32, wings=3)


def test_timm_extra() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match=r"pip install 'fewshot\[timm\]'"):
            build_backbone("timm:resnet18", image_size=32)
    else:
        model = build_backbone("timm:resnet18", image_size=32).eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.feature_dim)


def test_last_stage_is_a_strict_subset() -> None:
    for name in ("conv4", "resnet12", "resnet18"):
        model = build_backbone(name, image_size=32)
        last = last_stage_parameters(model)
        assert 0 < len(last) < len(list(model.parameters()))


def test_module_prefix_and_head_keys_load(tmp_path: Path) -> None:
    source = build_backbone("resnet18", image_size=32)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 512)  # a classifier the encoder lacks
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    target = build_backbone("resnet18", image_size=32)
    report = load_weights(target, tmp_path / "ckpt.pth", "resnet18")
    assert report is not None and report.unexpected == ["fc.weight"] and not report.missing
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    assert "1 unexpected (fc.weight)" in report.summary()


def test_encoder_prefix_safetensors_reports_missing(tmp_path: Path) -> None:
    source = build_backbone("conv4", image_size=32)
    state = {f"encoder.{k}": v for k, v in source.state_dict().items() if "features.3" not in k}
    save_file(state, tmp_path / "w.safetensors")
    target = build_backbone("conv4", image_size=32)
    report = load_weights(target, tmp_path / "w.safetensors", "conv4")
    assert report is not None and report.missing and all("features.3" in k for k in report.missing)
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)


def test_run_directory_as_weights(tmp_path: Path) -> None:
    source = build_backbone("conv4", image_size=32)
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 256)
    run = tmp_path / "run"
    run.mkdir()
    save_file(state, run / "model.safetensors")
    target = build_backbone("conv4", image_size=32)
    report = load_weights(target, run, "conv4")
    assert report is not None and not report.unexpected and not report.missing


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    with path.open("wb") as handle:
        pickle.dump({"weight": _RunsCode(marker)}, handle, protocol=2)
    with pytest.raises(DataError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()
    for garbage in (b"torn", b"\x80\x02q\x00."):  # bytes that fail the unpickler oddly
        path.write_bytes(garbage)
        with pytest.raises(DataError, match="cannot read weights file"):
            read_state_dict(path)


def test_weights_that_match_nothing(tmp_path: Path) -> None:
    save_file({"other.weight": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(DataError, match="no weights"):
        load_weights(build_backbone("conv4", image_size=32), tmp_path / "w.safetensors", "conv4")
    with pytest.raises(UsageError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_imagenet_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty torch hub cache and no network (this machine is offline; the proxy
    # variables make sure of it elsewhere): the download fails.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    model = build_backbone("resnet18", image_size=32)
    with pytest.raises(UsageError) as info:
        load_weights(model, "imagenet", "resnet18")
    message = str(info.value)
    assert "\n" not in message and "local file" in message and "resnet18" in message
