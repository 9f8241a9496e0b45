"""Adam for one tensor, as the data-free optimisation methods (WUDI, DOGE-TA) use it.

Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980, Algorithm 1, in the operation
order of ``torch.optim.Adam``'s single-tensor path (no weight decay, no AMSGrad), so both give the same bytes. Written
out here because ``torch.optim`` imports torch's compiler stack on first use (seconds), and a fixed, visible
operation order is what makes these merges reproducible.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


class Adam:
    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.eps = param, lr, eps
        self.beta1, self.beta2 = betas
        self.m = torch.zeros_like(param)  # first moment
        self.v = torch.zeros_like(param)  # second moment
        self.t = 0

    def step(self, grad: Tensor) -> None:
        """theta <- theta - lr * m_hat / (sqrt(v_hat) + eps), updating ``param`` in place."""
        self.t += 1
        self.m.lerp_(grad, 1 - self.beta1)  # m = beta1 m + (1 - beta1) g
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)  # v = beta2 v + (1 - beta2) g^2
        step_size = self.lr / (1 - self.beta1**self.t)  # bias correction of m
        denom = (self.v.sqrt() / (1 - self.beta2**self.t) ** 0.5).add_(self.eps)  # of v
        self.param.addcdiv_(self.m, denom, value=-step_size)


@contextlib.contextmanager
def one_thread():
    """Run an optimisation on one intra-op thread, as the engine does: matrix products then round the same way
    whoever calls (engine, ``merge_state_dicts``, the bench), and hundreds of small steps do not pay for thread
    hand-offs. Restores the caller's setting."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)
