"""Finding the attention blocks of a checkpoint from its config.json and tensor names (headers only).

Supported layouts (what ``protect`` looks for):
  BERT-like   ``<P>attention.self.{query,key,value}`` + ``<P>attention.output.dense`` (nn.Linear, absolute positions)
  GPT-2       ``<P>attn.c_attn`` (Conv1D [in, 3*hidden], q|k|v) + ``<P>attn.c_proj`` (Conv1D [hidden, hidden])
  LLaMA-like  ``<P>self_attn.{q,k,v,o}_proj`` (nn.Linear, rotary ``rotate_half``, grouped-query attention) for
              model types llama, mistral, qwen2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mergesmith.errors import MergesmithError

ROTARY_MODEL_TYPES = ("llama", "mistral", "qwen2")
LOOKED_FOR = (
    "BERT '*.attention.self.{query,key,value}' + 'attention.output.dense', "
    "GPT-2 '*.attn.c_attn' + 'attn.c_proj', "
    f"LLaMA-style '*.self_attn.{{q,k,v,o}}_proj' (model_type {', '.join(ROTARY_MODEL_TYPES)})"
)


@dataclass(frozen=True)
class AttentionBlock:
    """The tensor names of one attention layer. ``fused``: GPT-2's c_attn holds q|k|v in one Conv1D weight."""

    prefix: str
    q: str
    k: str | None
    v: str | None
    o: str
    q_bias: str | None
    k_bias: str | None
    v_bias: str | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.q, self.k, self.v, self.o, self.q_bias, self.k_bias, self.v_bias) if n)


@dataclass(frozen=True)
class AttentionLayout:
    family: str  # "bert" | "gpt2" | "llama"
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary: bool
    fused: bool  # GPT-2: q|k|v in one Conv1D ([in, out] layout)
    blocks: tuple[AttentionBlock, ...]


def read_config(checkpoint) -> dict[str, Any]:
    path = checkpoint.config_path
    if path is None:
        return {}
    return checkpoint.config()  # the bounded reader: one line naming the file on any problem


def _int(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _prefixes(names, pattern: str) -> list[str]:
    regex = re.compile(rf"^(?P<p>(?:.*\.)?){pattern}$")
    found = [m["p"] for m in map(regex.match, names) if m]
    return sorted(found, key=_natural)


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _optional(names: set[str], name: str) -> str | None:
    return name if name in names else None


def _require(names: set[str], name: str, where: str) -> str:
    if name not in names:
        raise MergesmithError(
            f"{where}: attention tensor '{name}' is missing; the checkpoint is incomplete or not a "
            f"standard Hugging Face layout"
        )
    return name


def detect_layout(checkpoint) -> AttentionLayout:
    """The attention layout of ``checkpoint`` or a one-line MergesmithError naming what was looked for."""
    names = set(checkpoint.tensors)
    config = read_config(checkpoint)
    where = str(checkpoint.root)
    model_type = str(config.get("model_type", "unknown"))
    bert = _prefixes(names, r"attention\.self\.query\.weight")
    gpt2 = _prefixes(names, r"attn\.c_attn\.weight")
    llama = _prefixes(names, r"self_attn\.q_proj\.weight")
    if llama and model_type in ROTARY_MODEL_TYPES:
        return _llama(names, config, llama, where)
    if gpt2 and not bert and not llama:
        return _gpt2(names, config, gpt2, where)
    if bert and not gpt2 and not llama:
        return _bert(names, config, bert, where)
    found = "q_proj without a supported rotary model_type" if llama else "no such tensors"
    raise MergesmithError(
        f"{where}: cannot identify the attention projections (model_type {model_type}; {found}); looked for "
        f"{LOOKED_FOR}; MergeLock supports those three layouts"
    )


def _heads(config: dict, where: str, *keys: str) -> int:
    heads = _int(config, *keys)
    if not heads or heads <= 0:
        raise MergesmithError(
            f"{where}: config.json has no {keys[0]}; MergeLock needs the number of attention heads "
            f"(save the model with save_pretrained so config.json is beside the weights)"
        )
    return heads


def _bert(names: set[str], config: dict, prefixes: list[str], where: str) -> AttentionLayout:
    position = config.get("position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        raise MergesmithError(
            f"{where}: position_embedding_type {position!r} adds query-position terms that "
            f"MergeLock cannot preserve; only absolute position embeddings are supported"
        )
    heads = _heads(config, where, "num_attention_heads")
    blocks = []
    for p in prefixes:
        s = f"{p}attention.self."
        blocks.append(
            AttentionBlock(
                prefix=p,
                q=f"{s}query.weight",
                k=_require(names, f"{s}key.weight", where),
                v=_require(names, f"{s}value.weight", where),
                o=_require(names, f"{p}attention.output.dense.weight", where),
                q_bias=_optional(names, f"{s}query.bias"),
                k_bias=_optional(names, f"{s}key.bias"),
                v_bias=_optional(names, f"{s}value.bias"),
            )
        )
    return _finish("bert", heads, heads, config, blocks, rotary=False, fused=False, where=where)


def _gpt2(names: set[str], config: dict, prefixes: list[str], where: str) -> AttentionLayout:
    heads = _heads(config, where, "n_head", "num_attention_heads")
    blocks = [
        AttentionBlock(
            prefix=p,
            q=f"{p}attn.c_attn.weight",
            k=None,
            v=None,
            o=_require(names, f"{p}attn.c_proj.weight", where),
            q_bias=_optional(names, f"{p}attn.c_attn.bias"),
            k_bias=None,
            v_bias=None,
        )
        for p in prefixes
    ]
    return _finish("gpt2", heads, heads, config, blocks, rotary=False, fused=True, where=where)


def _llama(names: set[str], config: dict, prefixes: list[str], where: str) -> AttentionLayout:
    partial = config.get("partial_rotary_factor", 1.0)
    if partial not in (None, 1, 1.0):
        raise MergesmithError(
            f"{where}: partial_rotary_factor {partial} is not supported by MergeLock yet; only "
            f"full rotary embeddings (factor 1.0)"
        )
    heads = _heads(config, where, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads") or heads
    if heads % kv_heads:
        raise MergesmithError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    blocks = []
    for p in prefixes:
        s = f"{p}self_attn."
        blocks.append(
            AttentionBlock(
                prefix=p,
                q=f"{s}q_proj.weight",
                k=_require(names, f"{s}k_proj.weight", where),
                v=_require(names, f"{s}v_proj.weight", where),
                o=_require(names, f"{s}o_proj.weight", where),
                q_bias=_optional(names, f"{s}q_proj.bias"),
                k_bias=_optional(names, f"{s}k_proj.bias"),
                v_bias=_optional(names, f"{s}v_proj.bias"),
            )
        )
    return _finish("llama", heads, kv_heads, config, blocks, rotary=True, fused=False, where=where)


def _finish(family, heads, kv_heads, config, blocks, *, rotary, fused, where) -> AttentionLayout:
    hidden = _int(config, "hidden_size", "n_embd")
    head_dim = _int(config, "head_dim") if family == "llama" else None
    if head_dim is None:
        if not hidden or hidden % heads:
            raise MergesmithError(
                f"{where}: cannot derive the head size (hidden size {hidden}, {heads} heads); fix config.json"
            )
        head_dim = hidden // heads
    return AttentionLayout(family, heads, kv_heads, head_dim, rotary, fused, tuple(blocks))
