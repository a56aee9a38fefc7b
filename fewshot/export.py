"""`fewshot export`: an adapted model as one ONNX or TorchScript file, to deploy without
fewshot (or, for ONNX, without torch).

The file is a pure function of the images: input float `[N, 3, H, W]` RGB in 0..255 at
the model's image size (H and W fixed, N free), output the calibrated probabilities
`[N, classes]` = softmax(logits / T), as `Adapted.probabilities` gives them. The
normalisation, the encoder, the adapted head and the temperature are inside the graph;
an ensemble's file averages its members' probabilities. ONNX files carry the metadata
keys `classes` (a JSON list) and `image_size`.

What a head computed from the support set becomes constants of the graph. For the MAML
family that is the adapted (fast) weights and, for batch-norm layers without stored
statistics, the support set's statistics at those weights: they are folded into one
per-channel scale and shift, so the exported graph needs no support images.
A transductive head classifies a batch jointly and cannot be one fixed function of each
image: it is refused.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.errors import DataError, UsageError

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18
"""ONNX opset of exported files (onnxruntime 1.14 and later run it)."""
TOLERANCE = 1e-4
"""Largest difference from `Adapted.probabilities` an exported file may show."""
INSTALL = "pip install 'fewshot[export]'"


def head_logits(head: nn.Module) -> nn.Module:
    """A module giving the adapted head's logits for normalised images, free of support
    state the tracer could not follow."""
    from fewshot.methods.frozen import GradientMetaLogits
    from fewshot.methods.gbml import GradientMetaHead

    if isinstance(head, GradientMetaHead):
        return GradientMetaLogits(head)
    return copy.deepcopy(head)


class Probabilities(nn.Module):
    """One adapted model from float images in 0..255 to its calibrated probabilities."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        scale, shift = model.transform.params(torch.device("cpu"), 3)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.logits = head_logits(model.head).cpu().eval()
        self.temperature = float(model.temperature)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.logits(images * self.scale + self.shift).float()
        return torch.softmax(logits / self.temperature, dim=-1)


class MeanProbabilities(nn.Module):
    """An ensemble: the plain mean of its members' calibrated probabilities."""

    def __init__(self, members: list[Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList(Probabilities(m) for m in members)

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack([member(images) for member in self.members]).mean(0)


def members_of(model: Any) -> list[Any]:
    """The adapted models whose probabilities the file computes (one, or an ensemble's)."""
    members = list(getattr(model, "members", None) or [model])
    for member in members:
        if getattr(member, "transductive", False):
            method = getattr(member, "method", "unknown")
            raise UsageError(f"a transductive head ({method}) classifies the images of a "
                             "call jointly and cannot be exported", f"method {method}",
                             "adapt with an inductive head (protonet, simpleshot, "
                             "linear-probe, finetune, maml, fomaml, anil, metasgd, siamese)")
    sizes = {int(m.image_size) for m in members}
    if len(sizes) != 1 or int(model.image_size) not in sizes:
        raise DataError("ensemble members have different image sizes", sorted(sizes),
                        "adapt every member at one image size")
    return members


def graph_module(model: Any) -> nn.Module:
    """The module that is exported: probabilities of one model, or an ensemble's mean."""
    members = members_of(model)
    module = Probabilities(members[0]) if len(members) == 1 and members[0] is model \
        else MeanProbabilities(members)
    return module.eval()


def example_images(size: int, count: int, seed: int = 0) -> Tensor:
    """Float images in 0..255 (whole values, as decoded files give) to trace and check."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator).float()


def default_out(adapted_dir: Path, fmt: str) -> Path:
    return adapted_dir / f"model{SUFFIX[fmt]}"


def require_onnx() -> None:
    """ONNX export needs onnx and onnxscript (the exporter); checked before any work."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx and onnxscript packages", "--format onnx",
                         INSTALL) from None


def write_onnx(module: nn.Module, images: Tensor, path: Path, metadata: dict[str, str]) -> None:
    """torch.export-based ONNX (opset `OPSET`) with a dynamic batch dimension, one file
    (weights inside), metadata in `metadata_props`."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(module, (images,), input_names=["images"],
                                    output_names=["probabilities"], opset_version=OPSET,
                                    dynamo=True, external_data=False,
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    if program is None:
        raise RuntimeError("the ONNX exporter returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch.jit's deprecation notices, and the tracer's notes on values it keeps as
    constants (shapes of the adapted state: constants indeed), are not the user's
    concern; `export` checks the traced file's output on another batch size."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def write_torchscript(module: nn.Module, images: Tensor, path: Path,
                      metadata: dict[str, str]) -> None:
    """A traced TorchScript module; the metadata travels as `_extra_files` entries."""
    with torch.no_grad(), quiet_jit():
        traced = torch.jit.trace(module, (images,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=dict(metadata))


def run_file(path: Path, fmt: str, images: Tensor) -> Tensor:
    """Probabilities from an exported file, run by its own runtime (onnxruntime or
    torch.jit), for the check after writing."""
    if fmt == "torchscript":
        with torch.no_grad(), quiet_jit():
            return torch.jit.load(str(path), map_location="cpu")(images)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def reference(model: Any, images: Tensor) -> Tensor:
    """What the file must reproduce: `probabilities` of the model (or the members' mean)."""
    uint8 = images.to(torch.uint8)
    if hasattr(model, "probabilities"):
        return model.probabilities(uint8)
    return torch.stack([m.probabilities(uint8) for m in members_of(model)]).mean(0)


def export(model: Any, fmt: str, out: str | Path) -> Path:
    """Write `model` (an `Adapted`, or an ensemble with `members`) as one file, checked:
    on images of two batch sizes its output must match the model's probabilities."""
    from fewshot.data.files import atomic_write

    if fmt not in FORMATS:
        raise UsageError("unknown export format", fmt, "use onnx or torchscript")
    if fmt == "onnx":
        require_onnx()
    out = Path(out)
    if out.is_dir():
        raise UsageError("--out names a folder", out, f"pass a file name, e.g. model{SUFFIX[fmt]}")
    module = graph_module(model)
    size = int(model.image_size)
    metadata = {"classes": json.dumps(list(model.classes), ensure_ascii=False),
                "image_size": str(size)}
    writer = write_onnx if fmt == "onnx" else write_torchscript

    def write(tmp: Path) -> None:
        writer(module, example_images(size, 2), tmp, metadata)
        check = example_images(size, 3, seed=1)
        if fmt == "onnx":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                return  # nothing to run it with here; the graph passed onnx's checker
        difference = float((run_file(tmp, fmt, check) - reference(model, check)).abs().max())
        if not difference <= TOLERANCE:
            raise DataError(f"the exported model differs from the adapted one by {difference:.2g}",
                            out, "report this with the adapted folder's adapted.json")

    atomic_write(out, write)
    return out


def export_command(adapted_dir: Path, fmt: str, out: Path | None) -> Path:
    """`fewshot export`: load, refuse what cannot be exported, write; returns the file."""
    from fewshot.adapted import Adapted

    model = Adapted.load(adapted_dir)
    members_of(model)  # what no format can export is refused before a missing package
    if fmt == "onnx":
        require_onnx()  # before any tracing
    return export(model, fmt, out if out is not None else default_out(adapted_dir, fmt))
