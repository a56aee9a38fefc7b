"""A CPU meta-batch split over processes gives the serial engine's meta-gradient."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import UsageError
from fewshot.methods import build_head
from fewshot.models.conv4 import Conv4
from fewshot.train.task_workers import TaskWorkers, task_processes


def meta_batch(batch: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 6, 3, 16, 16, generator=gen, dtype=dtype),
            torch.arange(3).repeat_interleave(2).expand(batch, -1).contiguous(),
            torch.randn(batch, 9, 3, 16, 16, generator=gen, dtype=dtype),
            torch.arange(3).repeat_interleave(3).expand(batch, -1).contiguous()]


def head(name: str = "maml", dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    encoder = Conv4(16, channels=4, track_running_stats=False)
    return build_head(name, encoder, ways=3, inner_steps=2, inner_lr=0.3).to(dtype)


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_workers_give_the_serial_meta_gradient(name):
    tasks = meta_batch(3, torch.float64)  # shares: tasks 0 and 2 here, task 1 in the worker
    serial = head(name)
    loss, logits = serial.meta_loss(*tasks, backward=True)
    parallel = head(name)
    with TaskWorkers(parallel, 2) as workers:
        got_loss, got_logits = workers.meta_backward(*tasks)
        first = [p.grad.clone() for p in parallel.parameters()]
        support_losses = parallel.support_losses
        with torch.no_grad():  # an optimiser step in place: the worker must see it
            for p in parallel.parameters():
                p.sub_(0.1 * p.grad)
                p.grad = None
        workers.meta_backward(*tasks)
        second = [p.grad for p in parallel.parameters()]
    expected = torch.cat([p.grad.flatten() for p in serial.parameters()])
    got = torch.cat([g.flatten() for g in first])
    assert float((got - expected).norm() / expected.norm()) < 1e-12
    torch.testing.assert_close(got_loss, loss.detach())
    torch.testing.assert_close(got_logits, logits.detach())
    torch.testing.assert_close(support_losses, serial.support_losses)

    with torch.no_grad():
        for p in serial.parameters():
            p.sub_(0.1 * p.grad)
            p.grad = None
    serial.meta_loss(*tasks, backward=True)
    expected = torch.cat([p.grad.flatten() for p in serial.parameters()])
    got = torch.cat([g.flatten() for g in second])
    assert float((got - expected).norm() / expected.norm()) < 1e-12


def test_a_failing_task_in_a_worker_is_reported():
    tasks = meta_batch(2, torch.float32)
    tasks[3][1, 0] = 7  # task 1 (the worker's) has a query label beyond the 3 ways
    model = head(dtype=torch.float32)
    with TaskWorkers(model, 2) as workers, pytest.raises(RuntimeError, match="task worker"):
        workers.meta_backward(*tasks)


def test_a_dead_worker_is_an_error_not_a_hang():
    model = head(dtype=torch.float32)
    with TaskWorkers(model, 2) as workers:
        workers.workers[0].kill()
        workers.workers[0].join()
        with pytest.raises(RuntimeError, match="exited"):
            workers.meta_backward(*meta_batch(2, torch.float32))


def test_how_many_processes_share_a_meta_batch():
    cpu = torch.device("cpu")
    maml = head(dtype=torch.float32)
    protonet = build_head("protonet", Conv4(16, channels=4))
    assert task_processes(maml, cpu, 1, None) == 1  # one task: nothing to share
    assert task_processes(maml, cpu, 8, 1) == 1  # turned off
    assert task_processes(maml, cpu, 2, 4) == 2  # never more than the tasks
    assert task_processes(protonet, cpu, 8, None) == 1  # no per-task engine
    assert task_processes(maml, torch.device("cuda"), 8, None) == 1  # vmap there
    assert 1 <= task_processes(maml, cpu, 8, None) <= torch.get_num_threads()
    with pytest.raises(UsageError):
        task_processes(maml, cpu, 8, 0)
