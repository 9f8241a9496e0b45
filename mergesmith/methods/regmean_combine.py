"""RegMean's combination step: the closed-form least-squares merge of each linear layer from input Gram matrices.

Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models", arXiv:2212.09849, eq. (2)-(3):
W* = argmin_W sum_i ||X_i W - X_i W_i||^2 = (sum_i G_i)^-1 sum_i G_i W_i, with G_i = X_i^T X_i the Gram matrix of the
layer's inputs on model i's data and W in the paper's [in, out] layout. An ``nn.Linear`` stores W^T ([out, in]), so
here W*^T = (sum_i G~_i)^-1 sum_i G~_i W_i^T, transposed back. Section 3.2: the off-diagonal entries of every G_i
are scaled by ``alpha`` (G~ = alpha G + (1 - alpha) diag(G)), which regularises towards averaging.

GPT-2's ``Conv1D`` stores its weight in the paper's own layout ([in, out]); ``input_axis: 0`` (set per tensor with a
filter, as ``mergesmith adapt regmean`` writes it) says so, and the Gram is then [shape[0], shape[0]].

A Gram sum that is singular (inputs confined to a subspace) is regularised with a ridge ``ridge * mean(diag) * I``.
Tensors without Gram statistics (biases, norms, embeddings) are averaged, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng, Statistics, Streaming
from mergesmith.methods._spec import MethodSpec, above, between, param


@dataclass(frozen=True)
class Params:
    alpha: float = param(
        0.95, within=between(0, 1), doc="scale of the Grams' off-diagonal entries (1 = plain RegMean, 0 = averaging)"
    )
    ridge: float = param(1e-4, within=above(0), doc="ridge added to a singular Gram sum, relative to its mean diagonal")
    input_axis: int = param(
        1,
        choices=(0, 1),
        doc="the weight's axis the Gram's inputs index: 1 for nn.Linear [out, in], 0 for GPT-2 Conv1D [in, out]",
    )


def reduce_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """G~ = alpha G + (1 - alpha) diag(G) (section 3.2)."""
    if alpha == 1.0:
        return gram
    return gram * alpha + torch.diag_embed(torch.diagonal(gram)) * (1.0 - alpha)


def is_singular(matrix: Tensor, tol: float = 1e-10) -> bool:
    """True when the symmetric PSD ``matrix`` has no usable Cholesky factor (rank deficient up to ``tol``)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        return True
    scale = float(torch.diagonal(matrix).abs().max())
    return scale == 0.0 or float(torch.diagonal(factor).min()) ** 2 < tol * scale


def solve_regression(lhs: Tensor, rhs: Tensor, ridge: float) -> tuple[Tensor, bool]:
    """(lhs)^-1 rhs by a linear solve (never an explicit inverse); a singular ``lhs`` gets ``ridge * mean diag``.
    Returns the solution and whether it was regularised. Computed in float64."""
    lhs64, rhs64 = lhs.double(), rhs.double()
    regularised = is_singular(lhs64)
    if regularised:
        mean_diag = float(torch.diagonal(lhs64).mean())
        eps = ridge * (mean_diag if mean_diag > 0 else 1.0)
        lhs64 = lhs64 + eps * torch.eye(lhs64.shape[0], dtype=lhs64.dtype)
    return torch.linalg.solve(lhs64, rhs64), regularised


def regmean_weight(
    weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float, ridge: float
) -> tuple[Tensor, bool]:
    """Eq. (3) for one linear layer: ``weights`` in nn.Linear layout [out, in], ``grams`` [in, in]."""
    # Accumulated one model at a time: the float64 working set is two [in, in] and one [in, out] matrices, not
    # every model's reduced Gram (6 x 19 MB for a 1536-wide input) plus their stack.
    lhs: Tensor | None = None
    rhs: Tensor | None = None
    for g, w in zip(grams, weights):
        reduced = reduce_off_diagonal(g.double(), alpha)
        term = reduced @ w.double().T  # G~_i W_i^T : [in, out]
        if lhs is None or rhs is None:
            lhs, rhs = reduced.clone(), term
        else:
            lhs += reduced
            rhs += term
        del reduced, term
    assert lhs is not None and rhs is not None, "regmean_weight needs at least one model"
    solution, regularised = solve_regression(lhs, rhs, ridge)
    return solution.T.to(weights[0].dtype), regularised


def regmean_weight_in_layout(
    weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float, ridge: float, input_axis: int
) -> tuple[Tensor, bool]:
    """``regmean_weight`` for weights stored with their inputs on ``input_axis`` (0: Conv1D [in, out], solved on the
    transposed [out, in] view and turned back)."""
    if input_axis == 1:
        return regmean_weight(weights, grams, alpha, ridge)
    merged, regularised = regmean_weight([w.T for w in weights], grams, alpha, ridge)
    return merged.T.contiguous(), regularised


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    """A tensor without Grams (embeddings, norms, biases: section 3 averages them), one expert at a time. The
    engine streams only these: a Gram is not row-aligned with its weight."""
    total: Tensor | None = None
    count = 0
    for tensor in experts:
        total = tensor.clone() if total is None else total.add_(tensor)
        count += 1
    assert total is not None, "regmean_combine needs at least one model"
    return total.div_(count)


def merge_with_grams(
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: Params,
    rng: Rng | None = None,
    *,
    statistics: Sequence[Tensor],
) -> Tensor:
    """Eq. (3) for a linear weight with one Gram per model (``statistics``), solved on the whole tensor."""
    return regmean_weight_in_layout(experts, statistics, params.alpha, params.ridge, params.input_axis)[0]


def statistics_shape(shape: tuple[int, ...], params: Params) -> tuple[int, ...] | None:
    """A Gram of the inputs for 2-D (linear) weights: [in, in], ``in`` on ``input_axis``."""
    if len(shape) != 2:
        return None
    n = shape[params.input_axis]
    return (n, n)


SPEC = MethodSpec(
    name="regmean_combine",
    params=Params,
    paper="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models, arXiv:2212.09849",
    base="unused",
    streaming=Streaming(merge_block, one_expert_at_a_time=True),
    statistics=Statistics(statistics_shape, merge=merge_with_grams),
    description="closed-form regression merge of linear layers from Gram statistics (`mergesmith adapt regmean`)",
)
