"""Text features of many splits in one pass: every split's rows grouped by token length, batches without padding.

Scoring a model reads every task's split. Sorting each split by length on its own (``encoder.split_features``) still
pads each batch to its longest row; grouping the rows of all splits together by *exact* length gives batches whose
rows all have the same length, which run without padding and without an attention mask (a mask of ones changes
nothing but costs the masked attention path), and fills every batch to a token budget, since small matrix products
waste most of the CPU. The grouping depends only on the token ids, so it is built once per
set of splits (``bucket_by_length``) and reused for every model scored on them (``bucketed_features``); the pooled
features are gathered back into each split's own order.

A row's features equal the per-split path's up to float rounding (the same tokens meet the same weights; only the
batch they share a matrix product with differs), so accuracies match; ``precision="bf16"`` trades that equality for
speed on CPUs with bf16 matrix units (AMX) and is never the default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mergesmith.bench.encoder import EncodedSplit, pad_batch
from mergesmith.errors import MergesmithError
from mergesmith.pooling import mean_pool

# Tokens per batch (rows x padded length): small matrix products run far below the CPU's peak (all-MiniLM-L6-v2 on 2
# cores: ~1.8 k tokens per CPU-second at 2 k tokens a batch, ~3.5 k from 8-16 k on), and 16 k tokens of 64 keep a
# batch's attention scores near 100 MB (12 heads, fp32).
MAX_TOKENS = 16384

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LengthBatch:
    ids: Tensor  # int64 [B, L]
    mask: Tensor | None  # int64 [B, L] when rows were padded to a common length; None when all have length L


@dataclass(frozen=True)
class LengthBuckets:
    """Batches over the rows of several splits, and where each split's rows land in the concatenated outputs."""

    batches: tuple[LengthBatch, ...]
    positions: dict[str, Tensor]  # split name -> int64 [N]: output position of the split's row i
    tokens: int  # real tokens over all rows (what a pass reads)

    @property
    def padded_tokens(self) -> int:
        return sum(batch.ids.numel() for batch in self.batches)

    @property
    def rows(self) -> int:
        return sum(len(p) for p in self.positions.values())


def bucket_by_length(
    splits: Mapping[str, EncodedSplit], pad_id: int, *, max_tokens: int = MAX_TOKENS, length_multiple: int = 1
) -> LengthBuckets:
    """Batches over the rows of ``splits`` sorted by token length (rounded up to ``length_multiple``), each holding
    as many rows as fit in ``max_tokens`` (rows x the batch's width).

    Rows of one length fill whole batches of their own, unpadded and without a mask; a batch ends at a change of
    length once it holds a quarter of the budget, so only batches of rare lengths are padded (and masked). A ``length_multiple`` above 1 bounds the
    number of distinct sequence lengths (what a backend that compiles a kernel per shape, e.g. oneDNN's bf16 path,
    pays for) at the cost of padding. The order is fixed by the splits' order and rows, so the batches are the same
    on every call.
    """
    if max_tokens < 1 or length_multiple < 1:
        raise MergesmithError(f"max_tokens ({max_tokens}) and length_multiple ({length_multiple}) must be at least 1")
    members = sorted(
        (
            (-(-len(ids) // length_multiple) * length_multiple, index, row)
            for index, split in enumerate(splits.values())
            for row, ids in enumerate(split.ids)
        ),
    )
    names = list(splits)
    batches: list[LengthBatch] = []
    chunk: list[tuple[int, int, int]] = []

    def close() -> None:
        width = chunk[-1][0]  # sorted: the last row is the widest
        sequences = [splits[names[index]].ids[row] for _, index, row in chunk]
        if all(len(s) == width for s in sequences):
            batches.append(LengthBatch(torch.tensor(sequences, dtype=torch.long).reshape(len(chunk), width), None))
            return
        ids, mask = pad_batch(sequences, pad_id)
        extra = width - ids.shape[1]  # the longest row may be shorter than the rounded width
        batches.append(
            LengthBatch(nn.functional.pad(ids, (0, extra), value=pad_id), nn.functional.pad(mask, (0, extra)))
        )

    position_of: dict[str, list[int]] = {name: [0] * len(split) for name, split in splits.items()}
    for placed, member in enumerate(members):
        width, index, row = member
        full = chunk and (len(chunk) + 1) * width > max_tokens
        # At a new length, a batch already big enough to run efficiently closes rather than pad its rows.
        if full or (chunk and width != chunk[-1][0] and len(chunk) * chunk[-1][0] >= max_tokens // 4):
            close()
            chunk = []
        chunk.append(member)
        position_of[names[index]][row] = placed
    if chunk:
        close()
    positions = {name: torch.tensor(p, dtype=torch.long) for name, p in position_of.items()}
    tokens = sum(len(ids) for split in splits.values() for ids in split.ids)
    return LengthBuckets(tuple(batches), positions, tokens)


def _precision_context(precision: str):
    if precision not in PRECISIONS:
        raise MergesmithError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def bucketed_features(encoder: nn.Module, buckets: LengthBuckets, precision: str = "fp32") -> dict[str, Tensor]:
    """Mean-pooled last hidden states of every split's rows, float32 [N, width] per split in the split's order
    (the pooling of ``encoder.split_features``; not normalised)."""
    context = _precision_context(precision)
    encoder.eval()
    parts = []
    with torch.inference_mode(), context:
        for batch in buckets.batches:
            if batch.mask is None:
                hidden = encoder(input_ids=batch.ids).last_hidden_state
                parts.append(hidden.float().mean(1))
            else:
                hidden = encoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
                parts.append(mean_pool(hidden.float(), batch.mask))
    if parts:
        features = torch.cat(parts)
    else:
        config: Any = encoder.config
        features = torch.empty((0, config.hidden_size))
    # Outside inference mode, so the split's features are ordinary tensors a caller may use in any way.
    return {name: features[positions].clone() for name, positions in buckets.positions.items()}
