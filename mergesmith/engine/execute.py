"""Run a plan: read -> merge -> write, overlapped in threads, with memory bounded by a byte budget.

- Jobs are admitted strictly in plan order and each holds its estimated bytes until its output is written, so
  the tensors in flight never exceed the budget and the writer (which needs plan order) can never wait on a job
  that was not admitted.
- Methods with the block protocol stream a tensor in fixed row blocks: a 32000x4096 embedding never exists in
  fp32. Other methods see whole tensors.
- torch's intra-op threads are pinned to 1 while merging: a parallel reduction's rounding depends on the thread
  count, ours must not. Parallelism comes from merging several tensors at once.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from mergesmith.engine.plan import MergePlan, TensorJob, TensorRef
from mergesmith.engine.rng import TensorRng
from mergesmith.errors import MergesmithError
from mergesmith.methods._blocks import row_blocks
from mergesmith.methods._spec import MethodSpec

CONSTANT_BUDGET = 64 << 20  # small tensors in flight together never need more than this


@dataclass
class ExecutionReport:
    tensors: int = 0
    bytes_written: int = 0
    nonfinite: list[str] = field(default_factory=list)  # "model: tensor (N values)"
    fp16_clamped: list[str] = field(default_factory=list)


class NonFiniteInput(MergesmithError):
    pass


def job_cost(job: TensorJob, method: MethodSpec) -> int:
    """Bytes a job holds at its peak: its inputs and two working buffers in the compute dtype, plus the output."""
    if job.copy_from is not None:
        return job.out_nbytes * 2
    working = job.numel
    if blockwise(method, job) and len(job.shape) > 1:
        rows = max(b.stop - b.start for b in row_blocks(job.shape))
        working = rows * math.prod(job.shape[1:])
    held = len(job.inputs)
    if method.one_expert_at_a_time and blockwise(method, job):
        held = min(held, 2)  # the base and the expert being added
    return (held + 2) * working * job.compute_dtype.itemsize + job.out_nbytes


def blockwise(method: MethodSpec, job: TensorJob) -> bool:
    """Whether the method merges this tensor block by block: it has ``merge_block``, the tensor is not 0-d, and
    the tensor has no statistics unless they are per parameter (``statistics_by_row``)."""
    if method.merge_block is None or len(job.shape) == 0:
        return False
    return method.statistics_by_row or getattr(job.params, "statistics", None) is not True


def default_budget(plan: MergePlan) -> int:
    return max([CONSTANT_BUDGET] + [job_cost(j, plan.method) for j in plan.jobs])


class _ByteBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.closed = False
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> bool:
        with self._cond:
            while not self.closed and self.used + amount > self.limit and self.used > 0:
                self._cond.wait()
            if self.closed:
                return False
            self.used += amount
            return True

    def release(self, amount: int) -> None:
        with self._cond:
            self.used -= amount
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class _Inputs:
    """Reads a job's inputs from the checkpoints, converted to the compute dtype, checking finiteness."""

    def __init__(self, plan: MergePlan, job: TensorJob, report: ExecutionReport, strict: bool, lock: threading.Lock):
        self.plan, self.job, self.report, self.strict, self.lock = plan, job, report, strict, lock
        # Block-wise methods read a block several times (threshold passes, then the merge): check it once.
        self._checked: set[tuple[TensorRef, int]] = set()

    def read(self, ref: TensorRef, rows: slice | None) -> torch.Tensor:
        ckpt = self.plan.checkpoints[ref.model]
        tensor = ckpt.read(ref.name, rows if len(self.job.shape) > 0 else None)
        tensor = tensor.to(self.job.compute_dtype)
        key = (ref, rows.start if rows is not None else -1)
        if key not in self._checked:
            self._checked.add(key)
            self._check_finite(ref, tensor)
        return tensor

    def _check_finite(self, ref: TensorRef, tensor: torch.Tensor) -> None:
        # One reduction is enough when it is finite: a NaN or Inf anywhere makes the sum non-finite. Only a sum
        # that overflows (or a real NaN/Inf) pays for the exact count.
        if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
            return
        count = int((~torch.isfinite(tensor)).sum())
        if count == 0:
            return
        where = f"{self.plan.model_names[ref.model]}: {ref.name}"
        if self.strict:
            raise NonFiniteInput(
                f"{where} has NaN/Inf values; fix or drop that model, or run without --strict to merge anyway"
            )
        with self.lock:
            self.report.nonfinite.append(f"{where} ({count} non-finite values)")

    def blocks(self) -> Callable[[], Iterator[tuple[torch.Tensor | None, list[torch.Tensor]]]]:
        job = self.job
        slices = row_blocks(job.shape)

        lazy = self.plan.method.one_expert_at_a_time

        def iterate() -> Iterator[tuple[torch.Tensor | None, Sequence[torch.Tensor]]]:
            for rows in slices:
                base = self.read(job.base, rows) if job.base is not None else None
                if lazy:
                    yield base, _ReadOnDemand(self, job.experts, rows)
                else:
                    yield base, [self.read(ref, rows) for ref in job.experts]

        return iterate


class _ReadOnDemand(Sequence):
    """The experts' blocks, each read when the method reaches it and not kept (methods with
    ``one_expert_at_a_time``): a sum over 16 experts holds one expert's block at a time, not 16."""

    def __init__(self, inputs: _Inputs, refs: tuple[TensorRef, ...], rows: slice):
        self.inputs, self.refs, self.rows = inputs, refs, rows

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):  # still on demand: e.g. the models' tensors and their statistics, apart
            return _ReadOnDemand(self.inputs, self.refs[index], self.rows)
        return self.inputs.read(self.refs[index], self.rows)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for ref in self.refs:
            yield self.inputs.read(ref, self.rows)


def streams_rows(plan: MergePlan, job: TensorJob) -> bool:
    """Whether the job merges block by block (and so can hand its output over block by block)."""
    method = plan.method
    return job.copy_from is None and method.context is not None and blockwise(method, job)


def run_job(plan: MergePlan, job: TensorJob, seed: int, report: ExecutionReport, strict: bool, lock: threading.Lock,
            sink: queue.SimpleQueue | None = None) -> torch.Tensor | None:
    """Merge one output tensor; returns it in the output dtype, or, given a ``sink``, puts its row blocks there (in
    order) and returns None, so the writer can write a large tensor without it ever existing whole.

    Freed memory stays in the allocator for the next job: handing it back to the OS after every job (malloc_trim)
    made each job page-fault its buffers in afresh, a third of the merge's time spent in the kernel."""
    inputs = _Inputs(plan, job, report, strict, lock)
    if job.copy_from is not None:
        return plan.checkpoints[job.copy_from.model].read(job.copy_from.name, None).to(job.out_dtype)
    method = plan.method
    rng = TensorRng(seed, job.out_name)
    if streams_rows(plan, job):
        blocks = inputs.blocks()
        ctx = method.context(blocks, job.params, rng)
        out = torch.empty(job.shape, dtype=job.out_dtype) if sink is None else None
        for index, (rows, (base, experts)) in enumerate(zip(row_blocks(job.shape), blocks())):
            merged = _cast(method.merge_block(base, experts, job.params, ctx, rng, index), job, report, lock)
            if out is None:
                sink.put(merged)
            else:
                out[rows] = merged
            del merged, base, experts
        return out
    base = inputs.read(job.base, None) if job.base is not None else None
    experts = [inputs.read(ref, None) for ref in job.experts]
    merged = method.merge(base, experts, job.params, rng)
    if method.side_outputs:  # (tensor, per-task parts): the writer puts the parts beside the model (side_outputs.py)
        return _cast(merged[0], job, report, lock), merged[1]
    return _cast(merged, job, report, lock)


_JOB_DONE = object()


def _run_into(sink: queue.SimpleQueue | None, *args) -> torch.Tensor | None:
    """run_job in a worker; a streaming job always ends its sink with _JOB_DONE, also when it fails."""
    try:
        return run_job(*args, sink=sink)
    finally:
        if sink is not None:
            sink.put(_JOB_DONE)


def _cast(tensor: torch.Tensor, job: TensorJob, report: ExecutionReport, lock: threading.Lock) -> torch.Tensor:
    if job.out_dtype == torch.float16 and tensor.dtype != torch.float16:
        limit = torch.finfo(torch.float16).max
        over = tensor.abs() > limit
        if bool(over.any()):
            with lock:
                report.fp16_clamped.append(f"{job.out_name} ({int(over.sum())} values)")
            tensor = tensor.clamp(-limit, limit)
    return tensor.to(job.out_dtype)


def execute(
    plan: MergePlan,
    write: Callable[[str, torch.Tensor], None],
    *,
    seed: int = 0,
    threads: int = 2,
    budget_bytes: int | None = None,
    strict: bool = False,
    progress: Callable[[TensorJob], None] | None = None,
    write_rows: Callable[[str, torch.Tensor], None] | None = None,
) -> ExecutionReport:
    """Merge every job and hand the outputs to ``write`` in plan order.

    With ``write_rows`` (the writer's ``write_rows``), block-wise jobs hand their row blocks over as they are merged
    instead of a whole tensor: the job at the head of the plan is written while it runs.
    """
    report = ExecutionReport()
    lock = threading.Lock()
    limit = budget_bytes or default_budget(plan)
    budget = _ByteBudget(limit)
    admitted: deque[tuple[TensorJob, int, Future, queue.SimpleQueue | None]] = deque()
    ready = threading.Semaphore(0)
    failure: list[BaseException] = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="mergesmith")

    def admit() -> None:
        try:
            for job in plan.jobs:
                cost = min(job_cost(job, plan.method), limit)
                if not budget.acquire(cost):
                    return
                sink = queue.SimpleQueue() if write_rows is not None and streams_rows(plan, job) else None
                future = pool.submit(_run_into, sink, plan, job, seed, report, strict, lock)
                admitted.append((job, cost, future, sink))
                ready.release()
        except BaseException as exc:  # pragma: no cover - defensive: surface submitter failures
            failure.append(exc)
            ready.release()

    submitter = threading.Thread(target=admit, name="mergesmith-admit", daemon=True)
    submitter.start()
    try:
        for _ in plan.jobs:
            ready.acquire()
            if failure:
                raise failure[0]
            job, cost, future, sink = admitted.popleft()
            if sink is None:
                tensor = future.result()
                write(job.out_name, tensor)
                del tensor
            else:
                while (block := sink.get()) is not _JOB_DONE:
                    write_rows(job.out_name, block)
                    del block
                future.result()  # raises the job's error, if any
            report.tensors += 1
            report.bytes_written += job.out_nbytes
            budget.release(cost)
            if progress is not None:
                progress(job)
    finally:
        budget.close()
        pool.shutdown(wait=True, cancel_futures=True)
        submitter.join()
        torch.set_num_threads(previous_threads)
    return report
