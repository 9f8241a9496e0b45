"""One random generator per tensor (and per sub-key), seeded from (seed, tensor name, keys).

Results never depend on the order in which tensors are merged or on the number of threads: nothing shares a
generator, and no global RNG is touched.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    digest = hashlib.sha256("\x1f".join([str(seed), *map(str, keys)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TensorRng:
    """The random source a method receives for one tensor. ``generator(*keys)`` gives an independent stream."""

    def __init__(self, seed: int, tensor_name: str):
        self.seed = seed
        self.tensor_name = tensor_name

    def generator(self, *keys: object) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.seed, self.tensor_name, *keys))
        return g
