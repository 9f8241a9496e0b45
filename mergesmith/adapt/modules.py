"""Finding the parts of a transformers model that Surgery and WEMoE attach to, by architecture.

- ``transformer_blocks(model)``: the stack of transformer blocks (the longest ``nn.ModuleList`` of identical blocks:
  BERT ``encoder.layer``, GPT-2 ``h``, LLaMA ``layers``, CLIP ``encoder.layers``);
- ``mlp_blocks(model)``: per block, its MLP's linear layers: the ones reading the block's hidden states (``entry``)
  and the one writing back (``exit``). Known layouts:
    BERT      intermediate.dense -> output.dense
    GPT-2     mlp.c_fc -> mlp.c_proj                       (Conv1D: weight stored [in, out])
    LLaMA     mlp.gate_proj, mlp.up_proj -> mlp.down_proj
    CLIP/ViT  mlp.fc1 -> mlp.fc2
  A model where no layout matches fails with one line naming what was looked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mergesmith.errors import MergesmithError

# (entry linears, exit linear), relative to a transformer block
MLP_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("intermediate.dense",), "output.dense"),  # BERT, RoBERTa, MiniLM
    (("mlp.c_fc",), "mlp.c_proj"),  # GPT-2
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),  # LLaMA, Mistral, Qwen
    (("mlp.fc1",), "mlp.fc2"),  # CLIP, ViT-like
)


def _layout_names() -> str:
    return "; ".join(f"{' + '.join(entry)} -> {exit_}" for entry, exit_ in MLP_LAYOUTS)


def transformer_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """``(qualified name of the ModuleList, its blocks)``: the longest list of same-class modules in ``model``."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) != 1:
                continue
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise MergesmithError(
            f"{type(model).__name__}: no stack of transformer blocks found (looked for an nn.ModuleList of identical "
            "blocks, e.g. encoder.layer, h, layers); this method needs a transformer encoder or decoder"
        )
    return best[0], list(best[1])


@dataclass(frozen=True)
class MlpBlock:
    layer: int
    prefix: str  # qualified name of the block, e.g. "encoder.layer.3"
    entry: tuple[str, ...]  # qualified names of the linears reading the block's hidden states
    exit: str  # qualified name of the linear writing the block's output

    @property
    def linears(self) -> tuple[str, ...]:
        return (*self.entry, self.exit)


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    found: nn.Module | None = module
    for part in dotted.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def is_conv1d(module: nn.Module | None) -> bool:
    """GPT-2's ``Conv1D`` (transformers.pytorch_utils): y = x W + b with W stored [in, out], the transpose of
    ``nn.Linear``'s [out, in]. Matched by class name so that no transformers import is needed."""
    return type(module).__name__ == "Conv1D"


def is_linear_like(module: nn.Module | None) -> bool:
    """``nn.Linear`` or GPT-2's ``Conv1D`` (a linear layer with its weight stored transposed)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def mlp_blocks(model: nn.Module) -> list[MlpBlock]:
    """The MLP block of every transformer block (see the module docstring), or a one-line error."""
    try:
        stack, blocks = transformer_blocks(model)
    except MergesmithError:
        raise MergesmithError(
            f"{type(model).__name__}: no MLP blocks found: no stack of transformer blocks, and WEMoE needs one MLP per "
            f"block (looked for {_layout_names()})"
        ) from None
    for entry, exit_ in MLP_LAYOUTS:
        if all(is_linear_like(_get(block, n)) for block in blocks for n in (*entry, exit_)):
            prefix = f"{stack}." if stack else ""
            return [
                MlpBlock(i, f"{prefix}{i}", tuple(f"{prefix}{i}.{n}" for n in entry), f"{prefix}{i}.{exit_}")
                for i in range(len(blocks))
            ]
    raise MergesmithError(
        f"{type(model).__name__}: no MLP block found in its transformer blocks ({type(blocks[0]).__name__}); looked for "
        f"{_layout_names()}; WEMoE needs one of these layouts"
    )


__all__ = ["MLP_LAYOUTS", "MlpBlock", "mlp_blocks", "transformer_blocks", "is_conv1d", "is_linear_like"]
