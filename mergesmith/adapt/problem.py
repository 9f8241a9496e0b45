"""An adapt problem: the base encoder, one expert and head per task, and each task's data, from a bench ``Pool``.

Methods see data only through this object:

- ``task.unlabeled``: the test split's inputs WITHOUT labels (test-time methods such as AdaMerging read them; the
  object has no ``.labels``, so no method can peek at the test labels);
- ``task.validation``: the small labeled split (has ``.labels``);
- ``problem.batches(split, batch_size, shuffle=..., seed=...)``: deterministic model-input batches of either;
- ``problem.pooled(encoder, batch)``: the pooled features the bench scores with, with autograd.

Memory (issue 4): the base state and the task vectors are held once each (``base_state()``, ``task_vectors()``);
experts are loaded one at a time by the methods that need their modules (``load_encoder``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.bench.pool import Pool


@dataclass(frozen=True)
class Unlabeled:
    """A split's inputs with the labels removed: ``ids`` (text, token ids) or ``paths`` (image files)."""

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
    head: nn.Linear  # the task's head on pooled features (stays task-specific, never merged)
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
    featurizer: Any  # the bench featurizer (TextFeaturizer / ImageFeaturizer)
    _base: dict[str, Tensor] | None = field(default=None, repr=False)
    _buffers: dict[str, Tensor] | None = field(default=None, repr=False)
    _vectors: dict[str, dict[str, Tensor]] | None = field(default=None, repr=False)

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
        """The encoder saved at ``path`` (the base, an expert, a merged model), in eval mode, as the bench loads it."""
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
        self.base_state()
        missing = sorted(set(self._base) - set(floating))
        if missing:
            raise MergesmithError(f"the merged state lacks {len(missing)} tensor(s) of the base, e.g. {missing[0]!r}")
        return {**self._buffers, **{k: floating[k] for k in self._base}}

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
            raise MergesmithError("this task has no data for that split; the pool must give it (validation and test splits)")
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
        if self.modality == "text":
            from mergesmith.bench.encoder import pad_batch

            ids = split.inputs if isinstance(split, Unlabeled) else split.ids
            input_ids, mask = pad_batch([ids[int(i)] for i in rows], self.featurizer.pad_id)
            return {"input_ids": input_ids, "attention_mask": mask}
        return {"pixel_values": self._pixels(split, rows)}

    def _pixels(self, split: Any, rows: Tensor) -> Tensor:
        image_split = split.inputs if isinstance(split, Unlabeled) else split
        if image_split._cached is None:
            for _ in self.featurizer.batches(image_split):  # caches the split's pixels when they are small enough
                pass
        if image_split._cached is not None:
            return image_split._cached[rows]
        return self.featurizer._pixels([image_split.paths[int(i)] for i in rows])

    def forward_kwargs(self, batch: Batch) -> dict[str, Tensor]:
        """The encoder's call kwargs for ``batch`` (for ``torch.func.functional_call`` and hooks)."""
        return dict(batch.inputs)

    def pooled(self, encoder: nn.Module, batch: Batch) -> Tensor:
        """[B, width] pooled features with autograd: exactly the bench's features (mean-pooled tokens for text; the
        image featurizer's projected / pooled output for images). The encoder's train/eval mode is left as is."""
        out = encoder(**self.forward_kwargs(batch))
        if self.modality == "text":
            return self.pool_hidden(out.last_hidden_state, batch).float()
        if self.featurizer.kind == "clip_projection" and getattr(out, "image_embeds", None) is not None:
            return out.image_embeds.float()
        if getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.float()
        return self.pool_hidden(out.last_hidden_state, batch, encoder).float()

    def pool_hidden(self, last_hidden_state: Tensor, batch: Batch, encoder: nn.Module | None = None) -> Tensor:
        """The pooling step alone. Text: mean over the attention mask. Images: the first token's state, passed through
        the encoder's own pooling head (CLIP: post-layernorm, then the visual projection) when ``encoder`` is given."""
        if self.modality == "text":
            from mergesmith.bench.encoder import mean_pool

            return mean_pool(last_hidden_state, batch.inputs["attention_mask"])
        first = last_hidden_state[:, 0]
        vision = getattr(encoder, "vision_model", None) if encoder is not None else None
        if vision is not None and hasattr(vision, "post_layernorm"):
            first = vision.post_layernorm(first)
            if self.featurizer.kind == "clip_projection" and hasattr(encoder, "visual_projection"):
                first = encoder.visual_projection(first)
        return first

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
            raise MergesmithError(f"{method} reads a labeled validation split but task {task.name!r} has none; give it one")


def problem_from_pool(pool: "Pool") -> AdaptProblem:
    """The adapt view of a bench pool. Checks that every head and every expert's own head fit the task's labels."""
    from mergesmith.bench.features import read_model_config

    config = read_model_config(pool.base_dir)
    width = _feature_width(pool.featurizer, config)
    tasks = []
    for t in pool.tasks:
        head = t.head
        if head.in_features != width:
            raise MergesmithError(
                f"task {t.name!r}: its head takes {head.in_features} features but the encoder gives {width}; give a head "
                "for this encoder"
            )
        if head.out_features != t.num_labels:
            raise MergesmithError(
                f"task {t.name!r}: its head has {head.out_features} outputs but the task has {t.num_labels} labels; the "
                "head and the label space must match"
            )
        _check_expert_head(t.name, Path(t.expert), head)
        for split_name in ("validation", "test"):
            split = getattr(t, split_name)
            if split is not None and len(split) and int(split.labels.max()) >= head.out_features:
                raise MergesmithError(
                    f"task {t.name!r}: its {split_name} split has label {int(split.labels.max())} but the head has only "
                    f"{head.out_features} outputs; the data's label space differs from the head's"
                )
        unlabeled = None
        if t.test is not None and len(t.test):
            unlabeled = Unlabeled(_without_labels(t.test, pool.featurizer.modality), pool.featurizer.modality)
        tasks.append(AdaptTask(t.name, head, unlabeled, t.validation, tuple(t.label_names)))
    return AdaptProblem(Path(pool.base_dir), {t.name: Path(t.expert) for t in pool.tasks}, tasks, pool.featurizer)


def _without_labels(split: Any, modality: str) -> Any:
    if modality == "text":
        return split.ids
    from mergesmith.bench.features import ImageSplit

    return ImageSplit(split.paths, [])  # its own pixel cache, an empty label tensor


def _feature_width(featurizer: Any, config: dict) -> int:
    if featurizer.modality == "text":
        return featurizer.feature_width(config)
    return featurizer.feature_width(config, featurizer.kind)


def _check_expert_head(task: str, expert: Path, head: nn.Linear) -> None:
    """An expert saved with its own head (``task_head.safetensors``) must have been trained on the task's labels."""
    from safetensors import safe_open

    from mergesmith.bench.zoo import HEAD_FILE

    path = expert / HEAD_FILE
    if not path.is_file():
        return
    try:
        with safe_open(str(path), "pt") as f:
            shape = tuple(f.get_slice("weight").get_shape()) if "weight" in f.keys() else None
    except Exception:  # unreadable heads are reported by the pool checker when they are used
        return
    if shape is not None and shape != tuple(head.weight.shape):
        raise MergesmithError(
            f"task {task!r}: expert {expert} was trained with a head of shape {list(shape)} but the pool's head for the "
            f"task is {list(head.weight.shape)}; the expert's label space differs from the task's: pair each task with "
            "its own expert"
        )


def load_problem(
    *, pool: str | Path | None = None, profile: str | None = None, cache_dir: str | Path | None = None, seed: int = 0,
    progress: bool = True, echo=print,
) -> AdaptProblem:
    """An AdaptProblem from a pool YAML (``mergesmith.bench.pool``) or a built-in bench profile ("default", "mini")."""
    if (pool is None) == (profile is None):
        raise MergesmithError("give either a pool YAML (--pool) or a built-in profile (--profile), not both or neither")
    if pool is not None:
        from mergesmith.bench.pool import load_pool

        return problem_from_pool(load_pool(pool, seed=seed, progress=progress, echo=echo))
    from mergesmith.bench.run import _profile_pool
    from mergesmith.bench.sources import default_cache_dir, ensure_writable
    from mergesmith.bench.tasks import PROFILES, build_tasks

    if profile not in PROFILES:
        raise MergesmithError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cache = ensure_writable(Path(cache_dir) if cache_dir else default_cache_dir())
    tasks = build_tasks(profile, cache, seed=seed, progress=progress)
    return problem_from_pool(_profile_pool(profile, tasks, cache, seed, progress, echo))
