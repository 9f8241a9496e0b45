"""What an adapt method needs from the model-and-data side: the ``Featurizer`` protocol.

The bench's ``TextFeaturizer`` and ``ImageFeaturizer`` (``mergesmith.bench.features``) implement it structurally
(no base class); an ``AdaptProblem`` holds one and reaches the encoder and the task data only through it. A split is
whatever the featurizer's pool built (token ids, image files); adapt never looks inside one, it asks the featurizer
for the model inputs of some of its rows or for a smaller split of the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

# What a task head reads from an encoder output (saved in Surgery's and Twin-Merging's outputs, so the loaded model
# pools as the featurizer did): the masked mean of the token states (text), CLIP's projected ``image_embeds``, or the
# pooled output (the first token's state for a model without a pooler).
REPRESENTATIONS = ("mean_tokens", "image_embeds", "pooler_output")


class TaskHead(Protocol):
    """A task's fixed classifier on the featurizer's features: an ``nn.Linear`` (probe protocol) or the bench's
    cosine head (zero-shot protocol). Adapt methods call it and read its shape; they never train it."""

    @property
    def in_features(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    def __call__(self, features: Tensor) -> Tensor: ...

    def state_dict(self) -> Mapping[str, Tensor]: ...


class Featurizer(Protocol):
    @property
    def modality(self) -> str:
        """``"text"`` (inputs ``input_ids`` and ``attention_mask``) or ``"image"`` (``pixel_values``)."""
        ...

    @property
    def representation(self) -> str:
        """What the task heads read, one of ``REPRESENTATIONS``."""
        ...

    def load(self, path: Path) -> nn.Module:
        """The encoder saved at ``path`` (the base, an expert, a merged model), in eval mode. Weights the checkpoint
        lacks initialise identically on every call, so they cancel in task vectors."""
        ...

    def inputs(self, split: Any, rows: Tensor) -> dict[str, Tensor]:
        """The encoder's call kwargs for rows ``rows`` of ``split``, in that order (text: ids padded with the
        tokenizer's pad id and the attention mask; images: preprocessed pixels, cached as the featurizer sees fit)."""
        ...

    def select(self, split: Any, rows: Tensor) -> Any:
        """Rows ``rows`` of a labeled split, as a split of the same kind (with their labels)."""
        ...

    def pool(self, output: Any, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        """[B, width] features a task head reads, from the encoder's output on ``inputs`` (autograd kept)."""
        ...

    def pool_hidden(self, hidden: Tensor, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        """The pooling step alone, from the last hidden states (text: the masked mean; images: the first token's
        state through ``encoder``'s own pooling head when it is given)."""
        ...


__all__ = ["Featurizer", "REPRESENTATIONS", "TaskHead"]
