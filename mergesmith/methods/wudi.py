"""WUDI-Merging: data-free, per-matrix optimisation of the merged task vector, with task vectors as input proxies.

Cheng, Xiong, Wei, Zhu, Yuan 2025, "Whoever Started the Interference Should End It: Guiding Data-Free Model Merging
via Task Vectors", ICML 2025, arXiv:2503.08099.

For a linear layer with weight W (out x in), the paper shows (Sec. 3, Proposition 1) that each row of a task vector
tau_i is approximately a linear combination of that task's inputs, so the rows of tau_i span (approximately) the
task's input subspace. The interference of the merged vector tau_m on task i, ||(tau_m - tau_i) x||^2 over the
task's inputs x, is then bounded through tau_i itself, and WUDI minimises (Sec. 4, the WUDI objective)

    L(tau_m) = sum_i 1/||tau_i||_F^2 * || (tau_m - tau_i) tau_i^T ||_F^2

layer by layer with Adam, starting from task arithmetic's sum tau_m = sum_i tau_i (Sec. 4, "Optimization"); no
merging coefficient is tuned. theta = theta_base + tau_m.

Parameters (the authors' code and fusion-bench 0.2.33 use Adam with lr 1e-5, 300 steps by default):
- ``steps`` (default 300): Adam steps per matrix.
- ``lr`` (default 1e-5): Adam's learning rate (betas 0.9, 0.999, eps 1e-8, no weight decay).

Tensors that are not 2-D matrices (biases, norms) are merged as the average of the task vectors (task arithmetic
with lambda = 1/T), as the authors' code does. The optimisation runs in float32 whatever the input dtype, with a
closed-form gradient in a fixed operation order, on one intra-op thread (``_adam.one_thread``): the same inputs give
the same bytes whoever calls (engine, ``merge_state_dicts``, bench). A task whose task vector is exactly zero has no input proxy and is left out of L.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._adam import Adam, one_thread
from mergesmith.methods._protocol import Rng, check_shapes
from mergesmith.methods._spec import MAX_STEPS, MethodSpec, between, param

NAME = "wudi"


@dataclass(frozen=True)
class Params:
    steps: int = param(300, within=between(0, MAX_STEPS), doc="Adam steps per 2-D matrix")
    lr: float = param(1e-5, doc="Adam learning rate")


def wudi_loss(tau_m: Tensor, taus: Sequence[Tensor]) -> float:
    """L(tau_m) = sum_i ||(tau_m - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2, in fp64 (for reports and tests)."""
    total = 0.0
    x = tau_m.double()
    for tau in taus:
        t = tau.double()
        norm_sq = float((t * t).sum())
        if norm_sq > 0:
            total += float(((x - t) @ t.T).square().sum()) / norm_sq
    return total


class _Gradient:
    """dL/dtau_m = 2 * sum_i c_i (tau_m - tau_i) tau_i^T tau_i, with c_i = 1/||tau_i||_F^2.

    For a matrix no wider than 2*T times its height, the sums A = sum_i c_i tau_i^T tau_i (in x in) and
    B = sum_i tau_i (c_i tau_i^T tau_i) are formed once and each step costs one product, 2 (tau_m A - B); wider
    matrices use the per-task form, 2 sum_i c_i ((tau_m - tau_i) tau_i^T) tau_i, whose products are out x out.
    Both are exact 0 at tau_m = tau_1 when only one task remains (same products in the same order).
    """

    def __init__(self, taus: list[Tensor], weights: list[Tensor]):
        self.taus, self.weights = taus, weights
        rows, cols = taus[0].shape
        self.gram_form = cols <= 2 * len(taus) * rows
        if self.gram_form:
            scaled = [w * (t.T @ t) for t, w in zip(taus, weights)]  # c_i tau_i^T tau_i
            self.a = tv.sum_in_order(scaled)
            self.b = tv.sum_in_order(t @ g for t, g in zip(taus, scaled))
            del scaled

    def __call__(self, tau_m: Tensor) -> Tensor:
        if self.gram_form:
            return (tau_m @ self.a - self.b).mul_(2.0)
        return tv.sum_in_order(((tau_m - t) @ t.T) @ t * w for t, w in zip(self.taus, self.weights)).mul_(2.0)


def optimise(taus: Sequence[Tensor], steps: int, lr: float) -> Tensor:
    """Minimise L from tau_m = sum_i tau_i with Adam; float32 task vectors [out, in] in, float32 tau_m out."""
    kept = [t for t in taus if bool((t != 0).any())]  # a zero task vector gives no input proxy (and 1/0)
    tau_m = tv.sum_in_order(taus).clone()  # initialisation: task arithmetic's sum (Sec. 4)
    if not kept or steps == 0:
        return tau_m
    weights = [1.0 / t.square().sum() for t in kept]  # c_i = 1/||tau_i||_F^2, fp32 0-d tensors
    gradient = _Gradient(kept, weights)
    optimizer = Adam(tau_m, lr=lr)
    for _ in range(steps):
        optimizer.step(gradient(tau_m))
    return tau_m


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = tv.require_base(NAME, base)
    check_shapes(NAME, base, experts)
    if not experts:
        return base.clone()
    if base.dim() != 2:
        # not a matrix: the average of the task vectors, as the authors' code (task arithmetic, lambda = 1/T)
        stacked = tv.stacked_task_vectors(base, experts)
        return (base + tv.sum_in_order(stacked) / len(experts)).to(base.dtype)
    taus = [(e.float() - base.float()) for e in experts]
    with one_thread():
        tau_m = optimise(taus, params.steps, params.lr)
    return (base + tau_m.to(base.dtype)).to(base.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    whole_tensor=merge,
    paper="Cheng et al. 2025, Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via "
    "Task Vectors, arXiv:2503.08099",
    base="required",
    description="per-matrix Adam on sum_i ||(tau_m - tau_i) tau_i^T||^2 / ||tau_i||^2 from the task-arithmetic sum",
    non_matrix="merged as the average of the task vectors (task arithmetic with lambda = 1/T), as the authors' code",
)
