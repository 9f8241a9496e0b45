"""``protect_checkpoint``: stream a checkpoint through MergeLock into a new Hugging Face directory.

One attention layer at a time: its q/k/v/o weights (and biases) are read through ``mergesmith.io``, transformed in
float64, cast back to their stored dtype and written by the sharded writer; every other tensor is copied as is.
Memory is one attention layer plus the largest other tensor. The output is staged and renamed into place only when
complete; the input is never modified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mergesmith.errors import MergesmithError
from mergesmith.io import open_checkpoint
from mergesmith.io.model_card import CardText, loading_section
from mergesmith.io.model_dir import ModelDirectory, checkpoint_source
from mergesmith.protect.layout import AttentionBlock, AttentionLayout, detect_layout
from mergesmith.protect.transforms import lock_attention

PAPER = 'Wang et al. 2025, "Model Unmerging: Making Your Models Unmergeable for Secure Model Sharing" (MergeLock)'


@dataclass
class ProtectResult:
    out_dir: Path
    layout: AttentionLayout
    tensors: int
    shards: dict[str, str]


def layer_seed(seed: int, prefix: str) -> int:
    """A generator seed per attention layer, independent of processing order (sha256 of seed and layer name)."""
    digest = hashlib.sha256(f"mergelock:{seed}:{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def attention_views(x: dict[str, torch.Tensor], block: AttentionBlock, layout: AttentionLayout) -> tuple:
    """(q, k, v, o, q_bias, k_bias, v_bias) of one layer in nn.Linear layout ([out, in]), shapes checked."""
    h, kv, d = layout.num_heads, layout.num_kv_heads, layout.head_dim
    if layout.fused:
        # GPT-2 Conv1D: y = x W + b with W [in, 3*hidden]; as nn.Linear weights the q|k|v blocks are W^T's rows.
        w = x[block.q].T
        if w.dim() != 2 or w.shape[0] != 3 * h * d:
            raise MergesmithError(f"{block.q}: shape {tuple(x[block.q].shape)} is not [hidden, 3 x {h} heads x {d}]")
        q, k, v = w.split(h * d)
        qb, kb, vb = x[block.q_bias].split(h * d) if block.q_bias else (None, None, None)
        o = x[block.o].T  # c_proj Conv1D [H*d, hidden] -> Linear [hidden, H*d]
    else:
        assert block.k is not None and block.v is not None  # an unfused layout names all four projections
        q, k, v, o = x[block.q], x[block.k], x[block.v], x[block.o]
        qb, kb, vb = (x[n] if n else None for n in (block.q_bias, block.k_bias, block.v_bias))
    expected = {"q": (h * d, q), "k": (kv * d, k), "v": (kv * d, v)}
    for label, (rows, tensor) in expected.items():
        if tensor.dim() != 2 or tensor.shape[0] != rows:
            raise MergesmithError(
                f"{block.prefix}: {label} projection has shape {tuple(tensor.shape)}, expected {rows} "
                f"output rows ({h} heads, {kv} key/value heads, head size {d}); check config.json"
            )
    if o.dim() != 2 or o.shape[1] != h * d:
        raise MergesmithError(
            f"{block.prefix}: output projection has shape {tuple(o.shape)}, expected {h * d} input columns"
        )
    return q, k, v, o, qb, kb, vb


def protect_block(
    read: Callable[[str], torch.Tensor], block: AttentionBlock, layout: AttentionLayout, seed: int, strength: float
) -> dict[str, torch.Tensor]:
    """The protected tensors of one attention layer, in their stored dtypes."""
    stored = {name: read(name) for name in block.names}
    q, k, v, o, qb, kb, vb = attention_views({n: t.to(torch.float64) for n, t in stored.items()}, block, layout)
    h, kv, d = layout.num_heads, layout.num_kv_heads, layout.head_dim
    gen = torch.Generator().manual_seed(layer_seed(seed, block.prefix))
    q, k, v, o, qb, kb, vb = lock_attention(
        q,
        k,
        v,
        o,
        qb,
        kb,
        vb,
        num_heads=h,
        num_kv_heads=kv,
        head_dim=d,
        rotary=layout.rotary,
        strength=strength,
        gen=gen,
    )
    if layout.fused:
        new = {block.q: torch.cat([q, k, v]).T, block.o: o.T}
        if block.q_bias:
            assert qb is not None and kb is not None and vb is not None  # attention_views split the fused bias
            new[block.q_bias] = torch.cat([qb, kb, vb])
    else:
        assert block.k is not None and block.v is not None  # an unfused layout names all four projections
        new = {block.q: q, block.k: k, block.v: v, block.o: o}
        new.update(
            {n: t for n, t in ((block.q_bias, qb), (block.k_bias, kb), (block.v_bias, vb)) if n and t is not None}
        )
    return {name: new[name].to(stored[name].dtype).contiguous() for name in block.names}


def write_order(names: list[str], layout: AttentionLayout) -> list[tuple[str, AttentionBlock | None]]:
    """Checkpoint order, with each attention layer's tensors grouped at its first tensor's place."""
    owner = {n: b for b in layout.blocks for n in b.names}
    order: list[tuple[str, AttentionBlock | None]] = []
    started: set[str] = set()
    for name in names:
        block = owner.get(name)
        if block is None:
            order.append((name, None))
        elif block.prefix not in started:
            started.add(block.prefix)
            order.extend((n, block) for n in block.names)
    return order


def protect_checkpoint(
    model: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    strength: float = 2.0,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Callable[[int, int], None] | None = None,
) -> ProtectResult:
    """Write a MergeLock-protected copy of ``model`` to ``out_dir``: same outputs, unmergeable weights."""
    if not (strength >= 1.0 and strength < 1e3):
        raise MergesmithError(
            f"--strength {strength} is out of range; give a scale bound >= 1 (1 = orthogonal "
            f"transforms only; 2, the default, scales each direction by 1/2 .. 2)"
        )
    ckpt = open_checkpoint(model)
    try:
        layout = detect_layout(ckpt)
        if not layout.blocks:
            raise MergesmithError(f"{ckpt.root}: no attention layers found")
        order = write_order(list(ckpt.tensors), layout)
        entries = [(n, ckpt.tensors[n].dtype, ckpt.tensors[n].shape) for n, _ in order]
        with ModelDirectory(out_dir, {"model": checkpoint_source(ckpt, str(model))}, force=force) as out:
            writer = out.open_shards(entries, max_shard_size, metadata={"mergesmith": "mergelock"})
            done: dict[str, torch.Tensor] = {}
            for i, (name, block) in enumerate(order):
                if block is None:
                    writer.write(name, ckpt.read(name))
                else:
                    if name == block.names[0]:
                        done = protect_block(ckpt.read, block, layout, seed, strength)
                    writer.write(name, done.pop(name))
                if progress is not None:
                    progress(i + 1, len(order))
            shards = out.finish_shards()
            out.write_config(ckpt.config_path)
            out.copy_side_files(ckpt.root)
            out.commit(
                kind="protected",
                method="mergelock",
                paper=PAPER,
                seed=seed,
                base_model=str(model),
                config={"seed": seed, "strength": strength},
                details=_layout_details(layout),
                card=CardText(
                    title="Protected model (MergeLock)",
                    tags=("mergelock",),
                    sections=(_CARD_SECTION, loading_section()),
                ),
            )
        return ProtectResult(Path(out_dir), layout, len(order), shards)
    finally:
        ckpt.close()


_CARD_SECTION = """## What was done

The attention weights of every layer were transformed by invertible maps that cancel inside the layer (MergeLock):
the model computes the same outputs as the input model, while averaging its weights with another fine-tune of the
same base no longer gives a working model. Check both with `mergesmith protect --verify`."""


def _layout_details(layout: AttentionLayout) -> dict:
    return {
        "architecture": layout.family,
        "attention_layers": len(layout.blocks),
        "heads": {
            "query": layout.num_heads,
            "key_value": layout.num_kv_heads,
            "head_dim": layout.head_dim,
            "rotary": layout.rotary,
        },
    }
