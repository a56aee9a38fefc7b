"""The tasks of a CPU meta-batch spread over processes, one share of the cores each.

A MAML task's small convolutions (a 5-image support set at 84 px) keep one core busy far
better than they split over several, and Python threads would contend for the GIL; so on
a multi-core CPU the meta-batch is split over processes. The head's parameters live in
shared memory: each worker holds a replica that sees every optimiser step in place.
For each meta-batch the main process runs its own share of the tasks while the workers
run theirs; each task returns its gradients, and these are summed in task order, so the
result does not depend on timing. Off with `train.task_processes: 1`; used on the CPU only.
"""

from __future__ import annotations

import os
import queue
import signal
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import Tensor

from fewshot.errors import UsageError


def _run_tasks(head: Any, tasks: tuple[Tensor, ...], indices: list[int], scale: float
               ) -> list[tuple[int, Tensor, Tensor, Tensor, tuple]]:
    support, support_labels, query, query_labels, ways = tasks
    return head.task_gradients(support, support_labels, query, query_labels, int(ways),
                               indices, scale)


def _worker(head: Any, threads: int, jobs: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    from fewshot.runtime import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(threads)
    while (job := jobs.get()) is not None:
        try:
            results.put(("ok", _run_tasks(head, *job)))
        except Exception as error:  # noqa: BLE001 - sent back whole, raised by the main process
            results.put(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class TaskWorkers:
    """`processes - 1` worker processes for `head` (a MAML-family head on the CPU)."""

    def __init__(self, head: Any, processes: int) -> None:
        self.head = head
        self.processes = processes
        self.threads = max(1, torch.get_num_threads() // processes)
        head.share_memory()
        context = mp.get_context("spawn")
        self.jobs = [context.SimpleQueue() for _ in range(processes - 1)]
        self.results = context.Queue()
        self.workers = [context.Process(target=_worker, daemon=True,
                                        args=(head, self.threads, jobs, self.results))
                        for jobs in self.jobs]
        for worker in self.workers:
            worker.start()

    def meta_backward(self, support: Tensor, support_labels: Tensor, query: Tensor,
                      query_labels: Tensor) -> tuple[Tensor, Tensor]:
        """As `head.meta_loss(..., backward=True)`: gradients into `.grad`, detached mean
        loss and logits `[B, NQ, N]` back; `head.support_losses` set."""
        head, batch = self.head, support.shape[0]
        ways = head.check_ways(support_labels)
        tasks = (support, support_labels, query, query_labels, torch.tensor(ways))
        shares = [list(range(w, batch, self.processes)) for w in range(self.processes)]
        for jobs, indices in zip(self.jobs, shares[1:], strict=True):
            if indices:
                jobs.put((tasks, indices, 1.0 / batch))
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            done = _run_tasks(head, tasks, shares[0], 1.0 / batch)
        finally:
            torch.set_num_threads(threads)
            errors = []
            for _ in [s for s in shares[1:] if s]:
                status, payload = self._result()
                if status == "ok":
                    done += payload
                else:
                    errors.append(payload)
        if errors:
            raise RuntimeError("a task worker failed:\n" + errors[0])
        done.sort(key=lambda item: item[0])
        params = [p for p in head.parameters() if p.requires_grad]
        for i, param in enumerate(params):
            for *_, grads in done:
                if grads[i] is not None:
                    param.grad = grads[i] if param.grad is None else param.grad + grads[i]
        head.support_losses = torch.stack([item[3] for item in done]).mean(0)
        return (torch.stack([item[1] for item in done]).mean(),
                torch.stack([item[2] for item in done]))

    def _result(self) -> tuple[str, Any]:
        """The next worker result; an error, not a hang, if a worker has died."""
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w in self.workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"a task worker exited (code {dead[0].exitcode}), perhaps out of "
                        "memory; set train.task_processes: 1 to run every task in one "
                        "process") from None

    def close(self) -> None:
        for jobs, worker in zip(self.jobs, self.workers, strict=True):
            if worker.is_alive():
                jobs.put(None)
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()

    def __enter__(self) -> TaskWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task_processes(head: Any, device: torch.device, meta_batch: int,
                   setting: int | None) -> int:
    """How many processes share a meta-batch: 1 (no workers) off the CPU, for heads
    without a per-task engine, or with one task; else `setting` or one per core (at most
    one per task)."""
    if setting is not None and setting < 1:
        raise UsageError("train.task_processes must be at least 1", str(setting),
                         "leave it unset (automatic) or set 1 to turn workers off")
    if device.type != "cpu" or not hasattr(head, "task_gradients") or meta_batch < 2:
        return 1
    if setting is not None:
        return min(setting, meta_batch)
    cores = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    return max(1, min(meta_batch, cores))
