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

import contextlib
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from mergesmith.engine.plan import MergePlan, TensorJob, TensorRef
from mergesmith.engine.rng import TensorRng
from mergesmith.errors import MergesmithError, is_out_of_memory
from mergesmith.methods._blocks import row_blocks
from mergesmith.methods._per_task import PerTaskParts
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


class MethodFailed(MergesmithError):
    """A merge method raised on a tensor (a shape it cannot take, a failed factorisation): the message names the
    method and the tensor; the method's own exception is the cause."""


# What a method raises on tensors it cannot merge (bad shapes, torch.linalg.LinAlgError, dtype errors); a method's
# parameters are checked before (``MethodSpec.make_params``).
METHOD_FAILURES = (ValueError, TypeError, RuntimeError, ArithmeticError, IndexError)


@contextlib.contextmanager
def failures_named(method: str, tensor: str) -> Iterator[None]:
    """Turn a method's failure on ``tensor`` into a one-line MethodFailed that names both."""
    try:
        yield
    except MergesmithError:
        raise
    except METHOD_FAILURES as exc:
        if is_out_of_memory(exc):
            raise  # said as out of memory (with how to lower it), not as this tensor's failure
        detail = " ".join(str(exc).split()) or "no message"
        detail = detail.removeprefix(f"{method}: ")  # the message names the method once
        kind = type(exc).__name__.lstrip("_")  # torch.linalg.LinAlgError is torch._C._LinAlgError
        raise MethodFailed(f"{method}: merging tensor {tensor!r} failed: {kind}: {detail}") from exc


def job_cost(job: TensorJob, method: MethodSpec) -> int:
    """Bytes a job holds at its peak: its inputs and two working buffers in the compute dtype, plus the output."""
    if job.copy_from is not None:
        return job.out_nbytes * 2
    working = job.numel
    if blockwise(method, job) and len(job.shape) > 1:
        rows = max(b.stop - b.start for b in row_blocks(job.shape))
        working = rows * math.prod(job.shape[1:])
    held = len(job.inputs)
    if method.streaming is not None and method.streaming.one_expert_at_a_time and blockwise(method, job):
        held = min(held, 2)  # the base and the expert being added (or a model and its statistic)
    return (held + 2) * working * job.compute_dtype.itemsize + job.out_nbytes


def blockwise(method: MethodSpec, job: TensorJob) -> bool:
    """Whether the method merges this tensor block by block: it streams, the tensor is not 0-d, and the tensor has
    no statistics unless they are row-aligned with the weights (``Statistics.merge_block``)."""
    if method.streaming is None or len(job.shape) == 0:
        return False
    return not job.statistics or (method.statistics is not None and method.statistics.merge_block is not None)


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

    def rows(self, refs: tuple[TensorRef, ...], rows: slice) -> Sequence[torch.Tensor]:
        """The row block of each tensor: read on demand for methods that hold one expert at a time."""
        streaming = self.plan.method.streaming
        if streaming is not None and streaming.one_expert_at_a_time:
            return _ReadOnDemand(self, refs, rows)
        return [self.read(ref, rows) for ref in refs]

    def blocks(self) -> Callable[[], Iterator[tuple[torch.Tensor | None, Sequence[torch.Tensor]]]]:
        job = self.job
        slices = row_blocks(job.shape)

        def iterate() -> Iterator[tuple[torch.Tensor | None, Sequence[torch.Tensor]]]:
            for rows in slices:
                base = self.read(job.base, rows) if job.base is not None else None
                yield base, self.rows(job.experts, rows)

        return iterate


class _ReadOnDemand(Sequence):
    """The experts' (or their statistics') blocks, each read when the method reaches it and not kept (methods with
    ``one_expert_at_a_time``): a sum over 16 experts holds one expert's block at a time, not 16."""

    def __init__(self, inputs: _Inputs, refs: tuple[TensorRef, ...], rows: slice):
        self.inputs, self.refs, self.rows = inputs, refs, rows

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):
        if isinstance(index, slice):  # a slice stays on demand
            return _ReadOnDemand(self.inputs, self.refs[index], self.rows)
        return self.inputs.read(self.refs[index], self.rows)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for ref in self.refs:
            yield self.inputs.read(ref, self.rows)


def streams_rows(plan: MergePlan, job: TensorJob) -> bool:
    """Whether the job merges block by block (and so can hand its output over block by block)."""
    return job.copy_from is None and blockwise(plan.method, job)


JobResult = torch.Tensor | tuple[torch.Tensor, PerTaskParts] | None


def run_job(
    plan: MergePlan,
    job: TensorJob,
    seed: int,
    report: ExecutionReport,
    strict: bool,
    lock: threading.Lock,
    sink: queue.SimpleQueue | None = None,
) -> JobResult:
    """Merge one output tensor; returns it in the output dtype (with its per-task parts for methods that keep them),
    or, given a ``sink``, puts its row blocks there (in order) and returns None, so the writer can write a large
    tensor without it ever existing whole. A method's failure is a MethodFailed naming the method and the tensor.

    Freed memory stays in the allocator for the next job: handing it back to the OS after every job (malloc_trim)
    made each job page-fault its buffers in afresh, a third of the merge's time spent in the kernel."""
    if job.copy_from is not None:
        return plan.checkpoints[job.copy_from.model].read(job.copy_from.name, None).to(job.out_dtype)
    with failures_named(plan.method.name, job.out_name):
        if streams_rows(plan, job):
            return _run_blocks(plan, job, seed, report, strict, lock, sink)
        return _run_whole(plan, job, seed, report, strict, lock)


def _run_blocks(
    plan: MergePlan,
    job: TensorJob,
    seed: int,
    report: ExecutionReport,
    strict: bool,
    lock: threading.Lock,
    sink: queue.SimpleQueue | None,
) -> torch.Tensor | None:
    method, streaming = plan.method, plan.method.streaming
    assert streaming is not None
    with_statistics = method.statistics.merge_block if method.statistics is not None and job.statistics else None
    inputs = _Inputs(plan, job, report, strict, lock)
    rng = TensorRng(seed, job.out_name)
    blocks = inputs.blocks()
    ctx = streaming.context(blocks, job.params, rng)
    out = torch.empty(job.shape, dtype=job.out_dtype) if sink is None else None
    for index, (rows, (base, experts)) in enumerate(zip(row_blocks(job.shape), blocks())):
        if with_statistics is not None:
            block = with_statistics(
                base, experts, job.params, ctx, rng, index, statistics=inputs.rows(job.statistics, rows)
            )
        else:
            block = streaming.merge_block(base, experts, job.params, ctx, rng, index)
        merged = _cast(block, job, report, lock)
        if out is None:
            assert sink is not None
            sink.put(merged)
        else:
            out[rows] = merged
        del block, merged, base, experts
    return out


def _run_whole(
    plan: MergePlan, job: TensorJob, seed: int, report: ExecutionReport, strict: bool, lock: threading.Lock
) -> torch.Tensor | tuple[torch.Tensor, PerTaskParts]:
    method = plan.method
    inputs = _Inputs(plan, job, report, strict, lock)
    base = inputs.read(job.base, None) if job.base is not None else None
    experts = [inputs.read(ref, None) for ref in job.experts]
    statistics = [inputs.read(ref, None) for ref in job.statistics] if job.statistics else None
    merged = method.merge(base, experts, job.params, TensorRng(seed, job.out_name), statistics=statistics)
    if isinstance(merged, tuple):  # (tensor, per-task parts): the writer puts the parts beside the model
        return _cast(merged[0], job, report, lock), merged[1]
    return _cast(merged, job, report, lock)


_JOB_DONE = object()


def _run_into(
    sink: queue.SimpleQueue | None,
    plan: MergePlan,
    job: TensorJob,
    seed: int,
    report: ExecutionReport,
    strict: bool,
    lock: threading.Lock,
) -> JobResult:
    """run_job in a worker; a streaming job always ends its sink with _JOB_DONE, also when it fails."""
    try:
        return run_job(plan, job, seed, report, strict, lock, sink=sink)
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
                sink: queue.SimpleQueue | None = (
                    queue.SimpleQueue() if write_rows is not None and streams_rows(plan, job) else None
                )
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
                assert write_rows is not None  # a job streams its rows only to a writer that takes them
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
