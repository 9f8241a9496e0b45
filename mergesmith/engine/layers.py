"""Where a tensor sits in the layer stack, read from its name.

Hugging Face checkpoints number their transformer blocks in the tensor names (``model.layers.3.mlp...``,
``transformer.h.3.attn...``, ``bert.encoder.layer.3.output...``). The first purely numeric segment marks the
block; the part before it is the stack's prefix. Models with two stacks (encoder and decoder) have two prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LAYER = re.compile(r"^(?P<prefix>(?:[^.]+\.)+?)(?P<index>\d+)\.(?P<rest>.+)$")

# Names that belong before the layer stack when slices reorder layers (embeddings); everything else outside the
# stack (final norm, output head) comes after it. mergekit takes these from its architecture files.
_PRE_STACK_HINTS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type", "embeddings.")


@dataclass(frozen=True)
class LayerName:
    prefix: str  # e.g. "model.layers."
    index: int
    rest: str  # e.g. "mlp.up_proj.weight"

    def with_index(self, index: int) -> str:
        return f"{self.prefix}{index}.{self.rest}"


def parse_layer(name: str) -> LayerName | None:
    match = _LAYER.match(name)
    if not match:
        return None
    return LayerName(match["prefix"], int(match["index"]), match["rest"])


def layer_counts(names: Iterable[str]) -> dict[str, int]:
    """Number of layers per stack prefix (max index + 1)."""
    counts: dict[str, int] = {}
    for name in names:
        layer = parse_layer(name)
        if layer is not None:
            counts[layer.prefix] = max(counts.get(layer.prefix, 0), layer.index + 1)
    return counts


def main_stack(names: Iterable[str]) -> str | None:
    """The prefix with the most tensors: the transformer blocks (other numbered prefixes are rarer)."""
    tally: dict[str, int] = {}
    for name in names:
        layer = parse_layer(name)
        if layer is not None:
            tally[layer.prefix] = tally.get(layer.prefix, 0) + 1
    if not tally:
        return None
    return max(sorted(tally), key=lambda prefix: tally[prefix])


def is_pre_stack(name: str) -> bool:
    return any(hint in name for hint in _PRE_STACK_HINTS)


def gradient_t(index: int, count: int) -> float:
    """Position of layer ``index`` in a stack of ``count`` layers, for gradient parameters (mergekit's rule)."""
    return index / (count - 1) if count > 1 else 1.0


def relative_depth(name: str, counts: dict[str, int]) -> float:
    """Where a tensor sits between the input (0) and the output (1) of the model, for depth-scaled methods (LiNeS).

    Layer l of a stack of L layers is at l / (L - 1) (1 for a one-layer stack, as ``gradient_t``); tensors outside
    every stack are at 0 when they come before it (embeddings) and at 1 otherwise (final norm, pooler, heads).
    ``counts`` maps each stack prefix to its number of layers in the output model (``layer_counts``).
    """
    layer = parse_layer(name)
    if layer is not None and layer.prefix in counts:
        return gradient_t(layer.index, counts[layer.prefix])
    return 0.0 if is_pre_stack(name) else 1.0


def natural_key(name: str) -> tuple:
    """Sort key that orders layer 10 after layer 9."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
