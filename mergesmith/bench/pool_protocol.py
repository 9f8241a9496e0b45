"""Which keys each protocol of a user pool reads, checked before any model is loaded.

``probe`` scores with the user's heads; ``zero_shot`` builds every task's head from its ``label_texts`` with the base
model (``mergesmith.bench.heads.zero_shot_head``), ``label_texts[i]`` describing ``data.labels[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergesmith.bench.data import Example
from mergesmith.bench.heads import check_label_texts
from mergesmith.bench.pool_schema import PoolSpec
from mergesmith.errors import MergesmithError


def check_protocol(label: str, spec: PoolSpec, modality: str) -> None:
    """Which keys each protocol reads: probe scores with the user's heads, zero_shot builds every head from the
    task's ``label_texts`` (text i describes ``data.labels[i]``) with the base's own text features."""
    if spec.protocol == "zero_shot" and modality == "image":
        raise MergesmithError(
            f"{label}: protocol: zero_shot embeds label_texts with the base model, and this base is an image encoder "
            "without a text tower; build each head from CLIP's text tower, give it as tasks[].head and set "
            "protocol: probe (see `python -m pydoc mergesmith.bench.pool`)"
        )
    for i, task in enumerate(spec.tasks):
        where = f"tasks[{i}]"
        if spec.protocol == "probe":
            if task.label_texts is not None:
                raise MergesmithError(
                    f"{label}: {where}.label_texts: only protocol zero_shot reads label descriptions and this pool "
                    "uses protocol probe; set protocol: zero_shot at the top level, or remove label_texts"
                )
            continue
        if task.head is not None:
            raise MergesmithError(
                f"{label}: {where}.head: protocol zero_shot builds the head of task {task.name} from its label_texts "
                "with the base model; remove head, or set protocol: probe to score with this head"
            )
        if not task.label_texts:
            raise MergesmithError(
                f"{label}: {where}.label_texts: task {task.name}: protocol zero_shot needs a description of each "
                "class and this task has none; give label_texts (one per class, in the order of data.labels) or "
                "set protocol: probe"
            )
        if task.data.labels is None:
            raise MergesmithError(
                f"{label}: {where}.data.labels: task {task.name}: label_texts describe the classes in the order of "
                "data.labels; list the labels there (label_texts[i] describes data.labels[i])"
            )
        try:
            check_label_texts(task.name, [str(n) for n in task.data.labels], task.label_texts)
        except MergesmithError as exc:
            raise MergesmithError(f"{label}: {where}.label_texts: {exc}") from None


def check_distinct_tokens(
    prefix: str, task: str, label_names: Sequence[str], texts: Sequence[str] | None, featurizer
) -> None:
    """Descriptions the base's tokenizer reads as the same tokens would give a zero-shot head equal rows; ``prefix``
    names the pool file and YAML key. Needs the tokenizer only, not the model."""
    ids = featurizer.encode([Example(text, 0) for text in texts or ()]).ids
    first: dict[tuple[int, ...], str] = {}
    for name, tokens in zip(label_names, ids, strict=True):
        if tokens in first:
            raise MergesmithError(
                f"{prefix}: task {task}: the base's tokenizer reads the descriptions of classes {first[tokens]!r} and "
                f"{name!r} as the same tokens (words outside its vocabulary, or a difference past its length limit); "
                "describe them in words it tells apart"
            )
        first[tokens] = name
