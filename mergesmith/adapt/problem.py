"""An adapt problem: the base encoder, one expert and head per task, and each task's data, read through a
``Featurizer`` (``mergesmith.adapt.featurizer``). The bench builds one from a pool (``mergesmith.bench.adapt_problem``).

Methods see data only through this object:

- ``task.unlabeled``: the test split's inputs WITHOUT labels (test-time methods such as AdaMerging read them; the
  object has no ``.labels``, so no method can peek at the test labels);
- ``task.validation``: the small labeled split (has ``.labels``);
- ``problem.batches(split, batch_size, shuffle=..., seed=...)``: deterministic model-input batches of either;
- ``problem.pooled(encoder, batch)``: the pooled features the task heads read, with autograd.

Memory: the base state and the task vectors are held once each (``base_state()``, ``task_vectors()``); experts are
loaded one at a time by the methods that need their modules (``load_encoder``).

What a result writes (``checkpoint_state``): the base checkpoint's tensors under the checkpoint's own names, the merged
values where the encoder holds them, so a checkpoint saved with a head (a causal LM's ``lm_head``, a masked LM's
``cls.*``) still loads with the class its config names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mergesmith.adapt.featurizer import Featurizer, TaskHead
from mergesmith.errors import MergesmithError


@dataclass(frozen=True)
class Unlabeled:
    """A split's inputs with the labels removed (a split of the featurizer's kind with an empty label tensor)."""

    inputs: Any  # the labeled split the inputs come from is NOT kept, only its inputs
    kind: str  # "text" | "image"

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Batch:
    """One model-input batch: ``inputs`` are the encoder's call kwargs; ``labels`` is None for unlabeled splits."""

    inputs: dict[str, Tensor]
    labels: Tensor | None
    rows: Tensor  # the batch's row indices in its split

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class AdaptTask:
    name: str
    head: TaskHead  # the task's head on pooled features (stays task-specific, never merged)
    unlabeled: Unlabeled | None  # the test split's inputs; test-time methods read inputs, never labels
    validation: Any  # a small labeled split (has ``.labels``, LongTensor)
    label_names: tuple[str, ...] = ()

    @property
    def num_labels(self) -> int:
        return self.head.out_features


@dataclass
class AdaptProblem:
    base_dir: Path
    expert_dirs: dict[str, Path]  # task name -> expert checkpoint (HF dir), same order as tasks
    tasks: list[AdaptTask]
    featurizer: Featurizer  # e.g. the bench's TextFeaturizer / ImageFeaturizer
    _base: dict[str, Tensor] | None = field(default=None, repr=False)
    _buffers: dict[str, Tensor] = field(default_factory=dict, repr=False)  # filled with _base by base_state
    _vectors: dict[str, dict[str, Tensor]] | None = field(default=None, repr=False)
    _stored: tuple[str, ...] | None = field(default=None, repr=False)  # the base checkpoint's tensor names

    # --- models ------------------------------------------------------------------------------------------------

    @property
    def modality(self) -> str:
        return self.featurizer.modality

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> AdaptTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise MergesmithError(f"no task {name!r} in this problem; tasks: {', '.join(self.task_names)}")

    def load_encoder(self, path: str | Path) -> nn.Module:
        """The encoder saved at ``path`` (the base, an expert, a merged model), in eval mode, as the featurizer loads it."""
        return self.featurizer.load(Path(path)).eval()

    def base_state(self) -> dict[str, Tensor]:
        """The base encoder's floating tensors in fp32 (held once; do not modify in place)."""
        if self._base is None:
            state = self.load_encoder(self.base_dir).state_dict()
            self._base = {k: v.detach().float().clone() for k, v in state.items() if v.is_floating_point()}
            self._buffers = {k: v.detach().clone() for k, v in state.items() if not v.is_floating_point()}
        return self._base

    def expert_state(self, task: str, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Task ``task``'s expert: its floating tensors (those of the base, or only ``keys``) in fp32, loaded afresh
        (not held), for methods that stream the experts one at a time instead of holding every task vector."""
        base = self.base_state()
        state = self.load_encoder(self.expert_dirs[task]).state_dict()
        return {k: state[k].detach().float() for k in (base if keys is None else keys)}

    def task_vectors(self) -> dict[str, dict[str, Tensor]]:
        """Per task: expert - base over the floating tensors (fp32), held once; experts are loaded one at a time."""
        if self._vectors is None:
            base = self.base_state()
            vectors = {}
            for name in self.expert_dirs:
                expert = self.expert_state(name)
                vectors[name] = {k: expert[k] - b for k, b in base.items()}
                del expert
            self._vectors = vectors
        return self._vectors

    def unchanged_tensors(self) -> frozenset[str]:
        """The floating tensors every expert left at the base value (e.g. word embeddings frozen in fine-tuning).
        Uses the task vectors when they are already held; else streams the experts one at a time, so a method that
        only needs this set never holds them all."""
        base = self.base_state()
        if self._vectors is not None:
            return frozenset(k for k in base if all(not bool(v[k].any()) for v in self._vectors.values()))
        changed: set[str] = set()
        for name in self.expert_dirs:
            expert = self.expert_state(name)
            changed.update(k for k, b in base.items() if k not in changed and not torch.equal(expert[k], b))
            del expert
        return frozenset(k for k in base if k not in changed)

    def full_state(self, floating: dict[str, Tensor]) -> dict[str, Tensor]:
        """A loadable state dict: ``floating`` (merged floating tensors, HF names) plus the base's integer buffers."""
        base = self.base_state()
        missing = sorted(set(base) - set(floating))
        if missing:
            raise MergesmithError(f"the merged state lacks {len(missing)} tensor(s) of the base, e.g. {missing[0]!r}")
        return {**self._buffers, **{k: floating[k] for k in base}}

    def checkpoint_names(self, names: Iterable[str]) -> dict[str, str]:
        """Encoder tensor name -> its name in the base checkpoint: the same name, or the one stored name ending in
        ``.name`` (a checkpoint saved from a model with a head prefixes the encoder's names: ``bert.``, ``model.``,
        ``transformer.``). Tensors the checkpoint does not store are left out: the loader initialises them alike in
        every model. The experts share the base's tensor names (the pool checks it)."""
        stored = self._stored_names()
        exact = set(stored)
        mapping = {}
        for name in names:
            if name in exact:
                mapping[name] = name
                continue
            matches = [s for s in stored if s.endswith("." + name)]
            if len(matches) > 1:
                raise MergesmithError(
                    f"{self.base_dir}: the encoder's tensor {name!r} matches {len(matches)} checkpoint tensors "
                    f"({matches[0]!r}, {matches[1]!r}); save the models with their encoder's own tensor names"
                )
            if matches:
                mapping[name] = matches[0]
        return mapping

    def checkpoint_state(self, floating: dict[str, Tensor]) -> dict[str, Tensor]:
        """What a result writes: every tensor of the base checkpoint under its name, ``floating`` (the merged encoder,
        encoder names) where the encoder holds it, the base's own value elsewhere (a head, tied or not, and whatever
        else lies outside the encoder), so the output loads with the class the base's config.json names, no tensor
        missing or unexpected. Floating tensors are fp32, as the merged ones are. Encoder tensors the checkpoint does
        not store (a pooler a masked-LM save lacks) are left out: every model, the merged one too, got them from the
        loader's seeded initialisation, and a loader gives them again."""
        from mergesmith.io import open_checkpoint

        full = self.full_state(floating)
        names = self.checkpoint_names(full)
        state = {names[k]: v for k, v in full.items() if k in names}
        with open_checkpoint(self.base_dir) as checkpoint:
            for name in checkpoint.tensors:
                if name not in state:
                    tensor = checkpoint.read(name)
                    state[name] = tensor.float() if tensor.is_floating_point() else tensor
        return state

    def _stored_names(self) -> tuple[str, ...]:
        if self._stored is None:
            from mergesmith.io import open_checkpoint

            with open_checkpoint(self.base_dir) as checkpoint:
                self._stored = tuple(checkpoint.tensors)
        return self._stored

    def encoder_with(self, floating: dict[str, Tensor]) -> nn.Module:
        """A fresh encoder of the base's architecture holding ``floating`` (merged weights), eval mode."""
        encoder = self.load_encoder(self.base_dir)
        with torch.no_grad():
            encoder.load_state_dict(self.full_state(floating), strict=False)
        return encoder.eval()

    # --- data --------------------------------------------------------------------------------------------------

    def batches(self, split: Any, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """Model-input batches of ``split`` (``task.unlabeled`` or ``task.validation``); the order depends only on
        ``seed`` (an explicit generator, never the global RNG)."""
        if split is None:
            raise MergesmithError(
                "this task has no data for that split; the pool must give it (validation and test splits)"
            )
        n = len(split)
        if n == 0:
            raise MergesmithError("the split is empty; give the task some examples")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        labels = None if isinstance(split, Unlabeled) else split.labels
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            inputs = self._inputs(split, rows)
            yield Batch(inputs, None if labels is None else labels[rows], rows)

    def _inputs(self, split: Any, rows: Tensor) -> dict[str, Tensor]:
        return self.featurizer.inputs(split.inputs if isinstance(split, Unlabeled) else split, rows)

    def forward_kwargs(self, batch: Batch) -> dict[str, Tensor]:
        """The encoder's call kwargs for ``batch`` (for ``torch.func.functional_call`` and hooks)."""
        return dict(batch.inputs)

    def pooled(self, encoder: nn.Module, batch: Batch) -> Tensor:
        """[B, width] pooled features with autograd: exactly the featurizer's features (mean-pooled tokens for text;
        the projected / pooled output for images). The encoder's train/eval mode is left as is."""
        out = encoder(**self.forward_kwargs(batch))
        return self.featurizer.pool(out, batch.inputs, encoder).float()

    def pool_hidden(self, last_hidden_state: Tensor, batch: Batch, encoder: nn.Module | None = None) -> Tensor:
        """The pooling step alone. Text: mean over the attention mask. Images: the first token's state, passed through
        the encoder's own pooling head (CLIP: post-layernorm, then the visual projection) when ``encoder`` is given."""
        return self.featurizer.pool_hidden(last_hidden_state, batch.inputs, encoder)

    def logits(self, encoder: nn.Module, task: str | AdaptTask, batch: Batch) -> Tensor:
        """The task head's logits on the encoder's pooled features (with autograd through the encoder)."""
        task = self.task(task) if isinstance(task, str) else task
        return task.head(self.pooled(encoder, batch))


def check_needs(problem: AdaptProblem, method: str, needs: frozenset[str]) -> None:
    """Fail with one line when a task lacks data the method reads (``spec.needs``)."""
    for task in problem.tasks:
        if "unlabeled" in needs and (task.unlabeled is None or len(task.unlabeled) == 0):
            raise MergesmithError(
                f"{method} adapts on unlabeled test inputs but task {task.name!r} has none; give the task a test split "
                "(its inputs are read, never its labels)"
            )
        if "validation" in needs and (task.validation is None or len(task.validation) == 0):
            raise MergesmithError(
                f"{method} reads a labeled validation split but task {task.name!r} has none; give it one"
            )
