"""The benchmark's model: a pretrained sentence encoder with one linear head per task on mean-pooled tokens.

Only the encoder is merged; heads stay task-specific (the protocol of the task-arithmetic and TIES papers). Texts
are tokenized once per split; inference batches are sorted by length so padding costs little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mergesmith.pooling import mean_pool

if TYPE_CHECKING:
    pass

MAX_LENGTH = 64


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of one split (unpadded, truncated to MAX_LENGTH) and its labels."""

    ids: tuple[tuple[int, ...], ...]
    labels: Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.ids)


def encode_split(tokenizer, examples) -> EncodedSplit:
    texts = [e.text for e in examples]
    out = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, add_special_tokens=True)
    return EncodedSplit(
        tuple(tuple(ids) for ids in out["input_ids"]), torch.tensor([e.label for e in examples], dtype=torch.long)
    )


def pad_batch(sequences: list[tuple[int, ...]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def embed(encoder: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    return mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


@torch.no_grad()
def split_features(encoder: nn.Module, split: EncodedSplit, pad_id: int, batch_size: int = 128) -> Tensor:
    """Sentence embeddings of a whole split, in the split's order."""
    encoder.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.ids[i]))
    config: Any = encoder.config  # a transformers config (nn.Module types its attributes as Tensor | Module)
    out = torch.empty((len(split), config.hidden_size))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([split.ids[i] for i in rows], pad_id)
        out[rows] = embed(encoder, ids, mask)
    return out


def accuracy(head: nn.Linear, features: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((head(features).argmax(-1) == labels).float().mean())


# A feature dimension whose spread over the training inputs is below this fraction of the median spread is constant
# for the probe. all-MiniLM-L6-v2's mean-pooled features have one such dimension (std 2e-9 against a median of 0.19):
# standardising it divided the probe's weight by ~1e-6, a folded weight of ~1e5, so the tiny drift a fine-tune or a
# merge gives that dimension shifted the logits by whole units and collapsed merged models onto one class.
CONSTANT_FEATURE_RATIO = 1e-3


def informative_features(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, std, informative)`` of the columns of ``features``; ``informative`` marks the columns that vary."""
    mean, std = features.mean(0), features.std(0)
    informative = std > CONSTANT_FEATURE_RATIO * std.median().clamp_min(1e-12)
    return mean, torch.where(informative, std, torch.ones_like(std)), informative


def train_probe(features: Tensor, labels: Tensor, num_labels: int, seed: int, steps: int = 300) -> nn.Linear:
    """A linear probe: multinomial logistic regression on standardised frozen features (full batch, Adam, light L2).
    Constant feature dimensions (``CONSTANT_FEATURE_RATIO``) get weight zero: they carry no information, and a weight
    scaled by 1/std on them would make the head amplify any later drift of that dimension."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], num_labels)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    mean, std, informative = informative_features(features)
    x = ((features - mean) / std) * informative
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x), labels).backward()
        opt.step()
    # Fold the standardisation into the head so it applies to raw features.
    with torch.no_grad():
        weight = head.weight * informative / std
        folded = nn.Linear(features.shape[1], num_labels)
        folded.weight.copy_(weight)
        folded.bias.copy_(head.bias - (weight * mean).sum(1))
    return folded
