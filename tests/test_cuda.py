"""The GPU paths: meta-train, pretrain, evaluate, adapt and the episode cache on CUDA.

Marked `cuda` and skipped (reported as skipped, never as passed) where CUDA is absent,
so CI collects them and a GPU machine runs them: `python -m pytest -m cuda
tests/test_cuda.py` (experiments/gpu_check.sh does). The commands are driven through
the command line, as a user runs them; the numerical checks through the public heads.

Tolerances, and why:
- vmap vs loop meta-gradient, and against learn2learn's MAML, in float64: relative error
  < 1e-6 (the same sums in another order: float64 rounding, amplified by the inner loop,
  ~4e-8 for Meta-SGD on the CPU), where float32 is ~1e-3 off and a wrong gradient O(1).
- vmap vs loop meta-gradient, float32 (TF32 off): second-order MAML through batch-norm
  on a 5-image support set amplifies rounding, so the float32 loop itself is ~5e-3 away
  from the float64 gradient (measured on the CPU). No fixed rtol separates right from
  wrong there; the check is that the vmap path is as accurate as the loop: its relative
  error against float64 is at most 3x the loop's + 1e-5, and the loop's is below 5e-2.
- bf16 autocast: 8 mantissa bits, so its meta-gradient only points the same way as the
  float32 one: cosine similarity > 0.9 (0.97 for MAML with the CPU's bf16 autocast).
- evaluate on CUDA vs CPU (cuDNN's default TF32 convolutions, as users run it): per-episode
  accuracy equal on all but at most 1 of 40 episodes, mean within 0.5 points.
- adapt on CUDA vs CPU, in process with TF32 off: same predictions, probabilities within
  1e-3; through the command line (TF32 on): probabilities within 2e-2 and the same
  prediction wherever the CPU's top class leads the runner-up by more than 0.05.
- the episode cache on the GPU: the very same uint8 images; normalised within 1e-6.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.methods import build_head
from fewshot.models import build_backbone

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"
TINY = ["model.backbone_args={channels: 8}", "train.ways=2", "train.shots=2",
        "train.queries=3", "train.val_episodes=4", "train.lr=0.01", "tracking.wandb=false"]
# The benchmark's task shape (experiments/bench_maml.py): Conv4 at 84 px, 5-way 1-shot.
WAYS, SHOTS, QUERIES, SIZE, STEPS = 5, 1, 15, 84, 5
GBML = ["maml", "anil", "metasgd"]


def sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    return write_tiny_task(tmp_path_factory.mktemp("task"))


@pytest.fixture
def exact_float32():
    """TF32 off, so float32 products keep float32's precision (cuDNN convolutions default
    to TF32's 10-bit mantissa)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------ meta-train, pretrain

@pytest.mark.parametrize("head", ["protonet", *GBML])
def test_meta_train_on_cuda_with_autocast_and_vmap_chunks(head, tiny_task, tmp_path):
    """A few meta-batches of 4 tasks on the GPU: autocast (bf16), channels-last weights,
    base images gathered on the GPU; MAML second order in vmap chunks of 2 tasks."""
    run = tmp_path / "run"
    options = [] if head == "protonet" else ["method.inner_steps=2", "method.chunk_size=2",
                                             "method.first_order=false"]
    result = run_cli("meta-train", "--quiet", "--no-wandb", "--device", DEVICE, "--out",
                     str(run), *sets(f"data.task={tiny_task}", *TINY, f"method.head={head}",
                                     "train.episodes=8", "train.meta_batch=4",
                                     "train.val_every=4", "train.amp=true", *options),
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    records = jsonl(run / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [4, 8]
    assert all(math.isfinite(r["train/loss"]) for r in train)
    assert all(r["train/gpu_mem_gb"] > 0 for r in train)  # logged only when on CUDA
    if head != "protonet":
        assert all(math.isfinite(r["train/support_loss_after"]) for r in train)
    assert [r["step"] for r in records if "val/acc" in r] == [4, 8]
    for key, value in load_file(run / "model.safetensors").items():
        assert torch.isfinite(value.float()).all(), key


def test_pretrain_on_cuda_with_amp(tiny_task, tmp_path):
    """Two epochs of supervised pretraining on the GPU with float16 autocast and a live
    gradient scaler (its state is saved only when it is enabled)."""
    run = tmp_path / "run"
    result = run_cli("pretrain", "--quiet", "--no-wandb", "--device", DEVICE, "--out", str(run),
                     *sets(f"data.task={tiny_task}", *TINY, "train.batch_size=8",
                           "train.epochs=2", "train.amp=true"),
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    losses = [r["train/loss"] for r in jsonl(run / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == 2 * 5 and all(math.isfinite(v) for v in losses)  # 40 images / 8
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert state["scaler"].get("scale", 0) > 0, state["scaler"]
    for key, value in load_file(run / "model.safetensors").items():
        assert torch.isfinite(value.float()).all(), key


# ------------------------------------------------------------------ meta-gradients

def tasks(batch: int, dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    """A meta-batch of random tasks (speed and exactness do not depend on the pixels)."""
    gen = torch.Generator().manual_seed(seed)
    support = torch.randn(batch, WAYS * SHOTS, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    query = torch.randn(batch, WAYS * QUERIES, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    s_labels = torch.arange(WAYS).repeat_interleave(SHOTS).expand(batch, -1).contiguous()
    q_labels = torch.arange(WAYS).repeat_interleave(QUERIES).expand(batch, -1).contiguous()
    return [support.to(DEVICE, dtype), s_labels.to(DEVICE), query.to(DEVICE, dtype),
            q_labels.to(DEVICE)]


def gbml_head(name: str, dtype: torch.dtype, inner_lr: float = 0.01, **options) -> nn.Module:
    """Conv4 (32 channels, batch-norm on batch statistics) under `name`, seeded weights,
    on the GPU with channels-last weights as meta-train places them."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=SIZE, channels=32, track_running_stats=False)
    head = build_head(name, encoder, ways=WAYS, inner_steps=STEPS, inner_lr=inner_lr, **options)
    return head.to(DEVICE, dtype).to(memory_format=torch.channels_last)


def meta_gradient(head: nn.Module, batch: list[Tensor]) -> Tensor:
    """The meta-gradient as `meta-train` accumulates it, flattened in float64."""
    head.zero_grad(set_to_none=True)
    head.meta_loss(*batch, backward=True)
    return torch.cat([p.grad.double().flatten() for p in head.parameters()
                      if p.grad is not None])


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("inner_lr", [0.01, 0.5])  # configs/maml-conv4.yaml; bench_maml.py
@pytest.mark.parametrize("name", GBML)
def test_vmap_meta_gradient_equals_the_loop_in_float64(name, inner_lr):
    """Second order, 8 tasks in vmap chunks of 3, 3 and 2 against the task-by-task loop."""
    batch = tasks(8, torch.float64)
    loop = meta_gradient(gbml_head(name, torch.float64, inner_lr, execution="loop"), batch)
    vmap = meta_gradient(gbml_head(name, torch.float64, inner_lr, execution="vmap",
                                   chunk_size=3), batch)
    assert rel(vmap, loop) < 1e-6


@pytest.mark.parametrize("name", GBML)
def test_vmap_meta_gradient_is_as_accurate_as_the_loop_in_float32(name, exact_float32):
    batch = tasks(8, torch.float64)
    truth = meta_gradient(gbml_head(name, torch.float64, execution="loop"), batch)
    batch32 = [t.float() if t.is_floating_point() else t for t in batch]
    loop = meta_gradient(gbml_head(name, torch.float32, execution="loop"), batch32)
    vmap = meta_gradient(gbml_head(name, torch.float32, execution="vmap", chunk_size=3),
                         batch32)
    loop_error, vmap_error = rel(loop, truth), rel(vmap, truth)
    assert loop_error < 5e-2, loop_error
    assert vmap_error <= 3 * loop_error + 1e-5, (vmap_error, loop_error)


@pytest.mark.parametrize("name", GBML)
def test_autocast_meta_batch_on_channels_last_weights(name, exact_float32):
    """meta-train's step on the GPU: bf16 autocast, vmap chunks, channels-last weights.
    The weights and their gradients stay float32; the gradient points the float32 way."""
    batch = tasks(4, torch.float32, seed=1)
    grads = {}
    for amp in (False, True):
        head = gbml_head(name, torch.float32, chunk_size=2)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            head.zero_grad(set_to_none=True)
            loss, logits = head.meta_loss(*batch, backward=True)
        assert math.isfinite(loss.item()) and logits.shape == (4, WAYS * QUERIES, WAYS)
        params = [p for p in head.parameters() if p.grad is not None]
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in params)
        convs = [p for p in head.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        grads[amp] = torch.cat([p.grad.flatten() for p in params])
    assert F.cosine_similarity(grads[True], grads[False], dim=0) > 0.9


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd"])
def test_meta_gradient_equals_learn2learn_on_cuda(name):
    """tests/test_maml_parity.py on the GPU, through the vmap path in chunks: float64,
    transductive batch-norm as learn2learn's examples. Relative error < 1e-6: float64
    rounding, amplified by the inner loop (Meta-SGD's is ~4e-8 on the CPU), against
    ~1e-3 for float32 and O(1) for a wrong gradient."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l2l = pytest.importorskip("learn2learn", reason="run tests/install_learn2learn.sh")
    ways, shots, queries, size, steps, lr, batch = 3, 2, 3, 28, 2, 0.3, 4
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=size, channels=8, track_running_stats=False)
    encoder = encoder.to(DEVICE, torch.float64)
    ours = build_head(name, copy.deepcopy(encoder), ways=ways, inner_steps=steps, inner_lr=lr,
                      transductive=True, execution="vmap", chunk_size=3)
    ours = ours.to(DEVICE, torch.float64)
    model = nn.Sequential(encoder, copy.deepcopy(ours.classifier))
    reference = (l2l.algorithms.MetaSGD(model, lr=lr) if name == "metasgd" else
                 l2l.algorithms.MAML(model, lr=lr, first_order=name == "fomaml"))
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(batch, ways * shots, 3, size, size, generator=gen, dtype=torch.float64)
    query = torch.randn(batch, ways * queries, 3, size, size, generator=gen, dtype=torch.float64)
    support, query = support.to(DEVICE), query.to(DEVICE)
    s_labels = torch.arange(ways, device=DEVICE).repeat_interleave(shots).expand(batch, -1)
    q_labels = torch.arange(ways, device=DEVICE).repeat_interleave(queries).expand(batch, -1)
    for b in range(batch):  # learn2learn's own example loop
        learner = reference.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support[b]), s_labels[b]))
        (F.cross_entropy(learner(query[b]), q_labels[b]) / batch).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()])

    names = [n for n, _ in ours.named_parameters() if not n.startswith("inner_lrs")]
    if name == "metasgd":  # learn2learn orders its rates as the module's parameters
        names += ["inner_lrs." + n.replace(".", "-") for n in names]
    ours.meta_loss(support, s_labels, query, q_labels, backward=True)
    params = dict(ours.named_parameters())
    got = torch.cat([params[n].grad.flatten() for n in names])
    assert rel(got, expected) < 1e-6


# ------------------------------------------------------------------ evaluate, adapt

@pytest.fixture(scope="module")
def cpu_runs(tiny_task, tmp_path_factory) -> dict[str, Path]:
    """Small fixed models: a ProtoNet and a MAML run meta-trained briefly on the CPU."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for head in ("protonet", "maml"):
        runs[head] = root / head
        result = run_cli("meta-train", "--quiet", "--no-wandb", "--device", "cpu", "--out",
                         str(runs[head]),
                         *sets(f"data.task={tiny_task}", *TINY, f"method.head={head}",
                               "train.episodes=6", "train.meta_batch=2", "train.val_every=6",
                               "method.inner_steps=2", "train.task_processes=1"),
                         cwd=root, timeout=300)
        assert result.returncode == 0, result.stderr
    return runs


@pytest.fixture(scope="module")
def new_classes(tmp_path_factory) -> Path:
    """Two new classes: the MAML run's classifier has two ways."""
    return make_folder(tmp_path_factory.mktemp("new") / "new_disease",
                       {"alpha": 8, "beta": 8}, size=16, seed=1)


@pytest.mark.parametrize("head", ["protonet", "maml"])
def test_evaluate_on_cuda_scores_as_on_the_cpu(head, cpu_runs, tiny_task, tmp_path):
    scores = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / f"{device}.json"
        result = run_cli("evaluate", "--quiet", "--no-wandb", "--model", str(cpu_runs[head]),
                         "--task", str(tiny_task), "--ways", "2", "--shots", "2", "--queries",
                         "3", "--episodes", "40", "--slow-episodes", "40", "--device", device,
                         "--json", str(out), cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr
        [scores[device]] = json.loads(out.read_text())["results"]
    cpu, gpu = (scores[d]["per_episode_accuracy"] for d in ("cpu", DEVICE))
    assert len(cpu) == len(gpu) == 40
    assert sum(a != b for a, b in zip(cpu, gpu, strict=True)) <= 1, (cpu, gpu)
    assert abs(sum(cpu) - sum(gpu)) / 40 <= 0.005


@pytest.mark.parametrize("head", ["protonet", "maml"])
def test_adapt_on_cuda_predicts_as_on_the_cpu(head, cpu_runs, new_classes, exact_float32):
    import fewshot

    records = {}
    for device in ("cpu", DEVICE):
        adapted = fewshot.load(cpu_runs[head]).adapt(new_classes, shots=3, seed=0,
                                                     device=device)
        assert next(adapted.head.parameters()).device.type == torch.device(device).type
        records[device] = adapted.predict(new_classes)
    assert len(records["cpu"]) == 16
    for cpu, gpu in zip(records["cpu"], records[DEVICE], strict=True):
        assert cpu["path"] == gpu["path"] and cpu["prediction"] == gpu["prediction"], cpu["path"]
        for name, p in cpu["probabilities"].items():
            assert abs(p - gpu["probabilities"][name]) <= 1e-3, (cpu["path"], name)


@pytest.mark.parametrize("head", ["protonet", "maml"])
def test_adapt_command_on_cuda_writes_what_the_cpu_writes(head, cpu_runs, new_classes,
                                                          tmp_path):
    """`fewshot adapt --device cuda` (as users run it, TF32 convolutions), then
    `fewshot predict`: the adapted model predicts as the one adapted on the CPU."""
    rows = {}
    for device in ("cpu", DEVICE):
        adapted = tmp_path / f"adapted-{device}"
        result = run_cli("adapt", str(new_classes), "--shots", "3", "--model",
                         str(cpu_runs[head]), "--device", device, "--out", str(adapted),
                         "--no-wandb", "--quiet", cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr
        out = tmp_path / f"predict-{device}.json"
        result = run_cli("predict", str(adapted), str(new_classes), "--format", "json",
                         "--out", str(out), cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr
        rows[device] = json.loads(out.read_text())
    assert len(rows["cpu"]) == 16
    classes = ("alpha", "beta")
    for cpu, gpu in zip(rows["cpu"], rows[DEVICE], strict=True):
        assert cpu["path"] == gpu["path"]
        cpu_p = sorted((cpu[f"p_{c}"] for c in classes), reverse=True)
        for c in classes:
            assert abs(cpu[f"p_{c}"] - gpu[f"p_{c}"]) <= 2e-2, (cpu["path"], c)
        if cpu_p[0] - cpu_p[1] > 0.05:
            assert cpu["prediction"] == gpu["prediction"], cpu["path"]


# ------------------------------------------------------------------ the episode cache

def test_cache_on_the_gpu_gives_the_cpu_episodes(tmp_path):
    """The decoded cache moved to the GPU (as meta-train places it) yields the same
    episodes, image for image, as the cache on the CPU."""
    from fewshot.data.cache import as_tensor, cached_array
    from fewshot.data.folders import scan_folder
    from fewshot.data.images import Normalize

    folder = scan_folder(make_folder(tmp_path / "data", {f"c{i}": 9 for i in range(5)}))
    images = as_tensor(cached_array(folder.paths, 16, directory=tmp_path / "cache", quiet=True))
    on_gpu = images.to(DEVICE)
    sampler = EpisodeSampler(folder.labels, 3, 2, 4, episodes=7, seed=3, tasks_per_batch=2)
    for transform in (None, Normalize()):
        cpu_batches = list(TensorEpisodes(images, sampler, transform=transform))
        gpu_batches = list(TensorEpisodes(on_gpu, sampler, transform=transform))
        assert len(cpu_batches) == len(gpu_batches) == 4  # 2 + 2 + 2 + 1 tasks
        for cpu, gpu in zip(cpu_batches, gpu_batches, strict=True):
            assert gpu.support.device.type == "cuda"
            assert [e.index for e in cpu.episodes] == [e.index for e in gpu.episodes]
            assert torch.equal(cpu.support_labels, gpu.support_labels.cpu())
            assert torch.equal(cpu.query_labels, gpu.query_labels.cpu())
            for a, b in ((cpu.support, gpu.support), (cpu.query, gpu.query)):
                assert a.dtype == b.dtype
                if transform is None:
                    assert torch.equal(a, b.cpu())
                else:
                    torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
