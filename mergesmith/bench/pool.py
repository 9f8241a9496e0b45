"""A bench pool: the base model, one expert and head per task, and the tasks' encoded splits; and user pools from YAML.

The runner (``mergesmith.bench.run``) scores a ``Pool`` whatever built it: the built-in profiles build one from the
cached expert zoo, ``mergesmith bench --pool POOL.yaml`` builds one from the user's own checkpoints and data::

    base_model: path/to/base            # HF directory: a text encoder (BERT-like) or a CLIP vision model
    modality: text                      # optional: image when the base config is CLIP/ViT-like, else text
    protocol: probe                     # optional: probe (the default) or zero_shot (below)
    tasks:
      - name: sst2
        expert: path/to/expert_dir      # fine-tuned from the base: same architecture and tensor shapes
        head: path/to/head.safetensors  # {"weight": [C, H], "bias": [C]} on the pooled features; optional when
                                        # the expert directory has task_head.safetensors (as the built-in zoo writes)
        data:
          format: csv                   # csv | jsonl | imagefolder (split_dir/<label name>/*.png|jpg|jpeg)
          train: train.csv              # optional: only the pretrained model's linear probe uses it
          validation: val.csv           # grid selection
          test: test.csv                # the reported scores
          text_column: text             # csv/jsonl only; default "text"
          label_column: label           # csv/jsonl only; default "label"; label names or integers
          labels: [neg, pos]            # optional label order (row i of the head is label i)

Relative paths start at the pool file's directory. A ``bias`` may be left out of a head (zero-shot heads have
none). Features: text encoders give mean-pooled last hidden states of at most 64 tokens; image encoders give
``mergesmith.bench.features``' features, computed from images preprocessed with the base directory's image
processor (``preprocessor_config.json``). The pretrained row is a linear probe trained on the frozen base's
features of each task's train split (the task's cell is empty without one).

``protocol: zero_shot`` is the task-arithmetic papers' protocol on a text pool: no ``head`` and no probe; each task
gives ``label_texts``, one description per class in the order of its (then required) ``data.labels``, and its head is
``mergesmith.bench.heads.zero_shot_head`` of the base on them (row i: the base's normalised features of text i). Every
row, the pretrained model's too, is scored with these heads::

    protocol: zero_shot
    tasks:
      - name: sentiment
        expert: path/to/expert_dir
        label_texts: [a negative review of a film, a positive review of a film]
        data: {format: csv, validation: val.csv, test: test.csv, labels: [neg, pos]}

FusionBench's CLIP-ViT 8-task protocol (SUN397, Stanford Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD) runs from
local files. The fine-tuned ``tanganke/clip-vit-base-patch32_<task>`` checkpoints (downloaded by the user) are
``CLIPVisionModel`` directories: the vision tower's ``vision_model.*`` tensors, no projection. The base must hold the
same tensors: the ``vision_model.*`` tensors of ``openai/clip-vit-base-patch32``'s safetensors file saved as the base's
``model.safetensors`` (``safetensors.torch.save_file``), one expert's ``config.json`` and CLIP's
``preprocessor_config.json`` beside them. Features are then the pooled output (768 wide); a task's zero-shot head is
its class-name text embeddings (normalised, [C, 512]) times CLIP's ``visual_projection.weight`` ([512, 768]), saved
without a bias, with ``data.labels`` in the head's class order and each split saved as an image folder, under
``protocol: probe`` (the bench has no CLIP text tower to build the heads itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from mergesmith.bench.data import Example
from mergesmith.bench.encoder import EncodedSplit
from mergesmith.bench.features import (
    ImageFeaturizer,
    ImageSplit,
    TextFeaturizer,
    infer_modality,
    make_featurizer,
    read_model_config,
)
from mergesmith.bench.heads import HEAD_FILE, ZERO_SHOT_TEMPERATURE, Head, zero_shot_head
from mergesmith.bench.pool_data import Record, read_split, resolve_labels
from mergesmith.bench.pool_protocol import check_distinct_tokens, check_protocol
from mergesmith.bench.pool_schema import MAX_LABELS, PoolSpec, TaskSpec, read_pool_spec, resolve_pool_path
from mergesmith.errors import MergesmithError

_T = TypeVar("_T")


@dataclass
class PoolTask:
    name: str
    label_names: tuple[str, ...]
    expert: Path
    head: Head
    probe: Head | None  # linear probe on the frozen base (None: the task has no train split)
    validation: EncodedSplit | ImageSplit  # text ids or image files, with ``.labels``
    test: EncodedSplit | ImageSplit
    sizes: dict[str, int]
    train_seconds: float | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def majority(self) -> float:
        return float(torch.bincount(self.test.labels).max()) / len(self.test)


@dataclass
class Pool:
    profile: str  # "default", "mini", or "custom" for a user pool
    base_dir: Path
    tasks: list[PoolTask]
    featurizer: TextFeaturizer | ImageFeaturizer
    base_model: str  # the results' description of the base model
    trained: str  # the results' description of what was trained
    provenance: dict = field(default_factory=dict)  # extra top-level results keys (where the pool came from)
    # "probe": the pretrained row is scored with each task's linear probe; "zero_shot": every row, the pretrained
    # model's too, is scored with the tasks' heads (cosine heads built from label descriptions by the base)
    protocol: str = "probe"

    @property
    def experts(self) -> dict[str, Path]:
        return {t.name: t.expert for t in self.tasks}


# --- user pools ------------------------------------------------------------------------------------------------------


@dataclass
class _CheckedTask:
    spec: TaskSpec
    expert: Path
    head: Head | None  # None under protocol zero_shot: ``build_pool`` builds it from the label texts
    label_names: tuple[str, ...]
    splits: dict[str, list[Record]]
    indices: dict[str, list[int]]


@dataclass
class CheckedPool:
    """A pool file whose checkpoints, heads and data were all checked; ``build_pool`` makes it a ``Pool``."""

    source: Path
    base_dir: Path
    modality: str
    config: dict
    tensor_names: list[str]
    tasks: list[_CheckedTask]
    protocol: str = "probe"


def check_pool(path: str | Path) -> CheckedPool:
    """Validate a pool YAML strictly (structure, files, architectures, heads, labels); reads headers, heads and data
    files, no model weights. Raises MergesmithError with one line naming the YAML path of the first problem."""
    from mergesmith.io import open_checkpoint

    spec: PoolSpec = read_pool_spec(path)
    label = str(path)  # messages name the file as the user typed it
    # Absolute paths from here on: the merge configs written into the run directory must work from anywhere.
    source = Path(path).resolve()
    root = source.parent

    base_dir = resolve_pool_path(root, spec.base_model)
    if not base_dir.is_dir():
        raise MergesmithError(
            f"{label}: base_model: {base_dir} is not a directory; give the Hugging Face directory of the base model"
        )
    config = _wrap(label, "base_model", lambda: read_model_config(base_dir))
    if config.get("model_type") == "clip":
        raise MergesmithError(
            f"{label}: base_model: {base_dir} is a whole CLIP model (text and vision towers); save its vision tower "
            "alone as the base, as the experts are saved (see `python -m pydoc mergesmith.bench.pool`)"
        )
    modality = spec.modality or infer_modality(config)
    check_protocol(label, spec, modality)
    base = _wrap(label, "base_model", lambda: open_checkpoint(base_dir))
    with base:
        base_shapes = {n: (tuple(i.shape), i.dtype.is_floating_point) for n, i in base.tensors.items()}
    width = _feature_width(label, modality, config, base_shapes)
    if modality == "image":
        _wrap(label, "base_model", lambda: ImageFeaturizer.require_processor(base_dir))
    model_type = config.get("model_type")

    tasks = []
    for i, task in enumerate(spec.tasks):
        where = f"tasks[{i}]"
        expert = resolve_pool_path(root, task.expert)
        _check_expert(label, f"{where}.expert", expert, base_shapes, model_type)
        head = None if spec.protocol == "zero_shot" else _user_head(label, where, root, task, expert)

        data = task.data
        if (modality == "image") != (data.format == "imagefolder"):
            wanted = "imagefolder" if modality == "image" else "csv or jsonl"
            raise MergesmithError(
                f"{label}: {where}.data.format: {data.format} data does not fit the base's {modality} features; use {wanted}"
            )
        if data.format == "imagefolder" and (data.text_column or data.label_column):
            key = "text_column" if data.text_column else "label_column"
            raise MergesmithError(
                f"{label}: {where}.data.{key}: applies to csv and jsonl data only; remove it (image folders are named by label)"
            )
        splits = {}
        for split in ("train", "validation", "test"):
            value = getattr(data, split)
            if value is None:
                continue
            splits[split] = _wrap(
                label,
                None,
                read_split,
                data.format,
                resolve_pool_path(root, value),
                data.text_column or "text",
                data.label_column or "label",
                f"{where}.data.{split}",
            )
        rows = head.weight.shape[0] if head is not None else len(task.label_texts or ())
        names, indices = _wrap(label, None, resolve_labels, splits, data.labels, where, rows)
        if head is not None:
            _check_head_fits(label, where, task, head, names, modality, width)
        tasks.append(_CheckedTask(task, expert, head, names, splits, indices))
    return CheckedPool(source, base_dir, modality, config, list(base_shapes), tasks, spec.protocol)


def build_pool(
    checked: CheckedPool,
    *,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    probes: bool = True,
) -> Pool:
    """Encode each task's validation and test splits and, with ``probes``, train the pretrained model's linear probes
    on the train splits (only the bench's pretrained row reads them: ``mergesmith adapt`` builds its pool without).
    Under protocol zero_shot each task's head is the base's cosine head on its label texts and no probe is trained:
    every row, the pretrained one too, is scored with those heads."""
    from tqdm import tqdm

    from mergesmith.bench.encoder import train_probe

    featurizer = _wrap(
        str(checked.source),
        "base_model",
        lambda: make_featurizer(checked.modality, checked.base_dir, checked.config, checked.tensor_names),
    )
    zero_shot = checked.protocol == "zero_shot"
    probes = probes and not zero_shot
    zero_shot_heads = _zero_shot_heads(checked, featurizer) if zero_shot else {}
    base = None
    tasks = []
    for task in tqdm(checked.tasks, desc="pool tasks", unit="task", disable=not progress):
        used = [split for split in task.splits if split != "train" or probes]
        encoded = {split: _encode(featurizer, task.splits[split], task.indices[split]) for split in used}
        head = task.head if task.head is not None else zero_shot_heads[task.spec.name]
        probe = None
        if "train" in encoded:
            if base is None:
                base = featurizer.load(checked.base_dir)
            train = encoded["train"]
            probe = train_probe(featurizer(base, train), train.labels, len(task.label_names), seed)
        tasks.append(
            PoolTask(
                name=task.spec.name,
                label_names=task.label_names,
                expert=task.expert,
                head=head,
                probe=probe,
                validation=encoded["validation"],
                test=encoded["test"],
                sizes={split: len(records) for split, records in task.splits.items()},
            )
        )
    missing = [t.name for t in tasks if t.probe is None]
    if missing and probes:
        echo(f"no train split for {', '.join(missing)}: the pretrained row has no score there")
    kind = checked.config.get("model_type", "unknown type")
    return Pool(
        profile="custom",
        base_dir=checked.base_dir,
        tasks=tasks,
        featurizer=featurizer,
        base_model=f"{checked.base_dir} ({kind}, {checked.modality} features)",
        trained=(
            f"user pool {checked.source}: experts supplied by the user; only the encoder is merged; "
            + (
                "each task's head is the base's zero-shot cosine head on the task's label descriptions"
                f" (scale {ZERO_SHOT_TEMPERATURE:g}), the pretrained row scored with it"
                if zero_shot
                else "heads supplied by the user; the pretrained row's linear probes were trained here on the frozen "
                "base's features of each train split"
            )
        ),
        provenance={"pool": str(checked.source)},
        protocol=checked.protocol,
    )


def _zero_shot_heads(checked: CheckedPool, featurizer) -> dict[str, Head]:
    """Each task's cosine head: row i is the base's features of ``label_texts[i]``, the description of label i.
    Descriptions the tokenizer reads as the same tokens would give equal rows: refused before the base is loaded."""
    for i, task in enumerate(checked.tasks):
        check_distinct_tokens(
            f"{checked.source}: tasks[{i}].label_texts",
            task.spec.name,
            task.label_names,
            task.spec.label_texts,
            featurizer,
        )
    base = featurizer.load(checked.base_dir)
    return {t.spec.name: zero_shot_head(base, featurizer, t.spec.label_texts or ()) for t in checked.tasks}


def load_pool(
    path: str | Path, *, seed: int = 0, progress: bool = True, echo: Callable[[str], None] = print, probes: bool = True
) -> Pool:
    return build_pool(check_pool(path), seed=seed, progress=progress, echo=echo, probes=probes)


# --- helpers -----------------------------------------------------------------------------------------------------------


def _wrap(label: str, where: str | None, action: Callable[..., _T], *args: Any) -> _T:
    """Run ``action(*args)``; prefix any MergesmithError with the pool file (and the YAML key when given)."""
    try:
        return action(*args)
    except MergesmithError as exc:
        raise MergesmithError(f"{label}: {where + ': ' if where else ''}{exc}") from None


def _short(names) -> str:
    names = list(names)
    return str(names) if len(names) <= 8 else str(names[:8])[:-1] + ", ...]"


def _user_head(label: str, where: str, root: Path, task: TaskSpec, expert: Path) -> Head:
    """The probe protocol's head: the task's ``head`` file, else the expert directory's ``task_head.safetensors``."""
    head_path = resolve_pool_path(root, task.head) if task.head is not None else expert / HEAD_FILE
    head_where = f"{where}.head" if task.head is not None else where
    if not head_path.exists():
        hint = (
            "check the path"
            if task.head is not None
            else f"give {where}.head (a safetensors file with the head's weight and bias)"
        )
        raise MergesmithError(f"{label}: {head_where}: no head file {head_path}; {hint}")
    return _load_head(label, head_where, head_path)


def _check_head_fits(
    label: str, where: str, task: TaskSpec, head: Head, names: tuple[str, ...], modality: str, width: int
) -> None:
    head_where = f"{where}.head" if task.head is not None else where
    if head.weight.shape[1] != width:
        raise MergesmithError(
            f"{label}: {head_where}: the head takes {head.weight.shape[1]} features but the base model's {modality} "
            f"features are {width} wide; give a head for this encoder"
        )
    if head.weight.shape[0] != len(names):
        raise MergesmithError(
            f"{label}: {head_where}: the head has {head.weight.shape[0]} outputs but the task has {len(names)} labels "
            f"{_short(names)}; list the head's labels under {where}.data.labels"
        )


def _feature_width(label: str, modality: str, config: dict, base_shapes: dict) -> int:
    try:
        if modality == "text":
            return TextFeaturizer.feature_width(config)
        return ImageFeaturizer.feature_width(config, ImageFeaturizer.kind_of(config, base_shapes))
    except (KeyError, TypeError, ValueError):
        raise MergesmithError(
            f"{label}: base_model: its config.json does not say the feature width of a {modality} encoder "
            "(hidden_size / projection_dim); check modality and base_model"
        ) from None


def _check_expert(label: str, where: str, expert: Path, base_shapes: dict, model_type) -> None:
    """The expert must be the base's architecture with the same tensors and shapes (floating tensors: buffers such as
    position ids are carried over by the engine when one checkpoint lacks them)."""
    from mergesmith.io import open_checkpoint

    if not expert.is_dir():
        raise MergesmithError(
            f"{label}: {where}: {expert} is not a directory; give the Hugging Face directory of the fine-tuned model"
        )
    expert_type = _wrap(label, where, lambda: read_model_config(expert)).get("model_type")
    if expert_type != model_type:
        raise MergesmithError(
            f"{label}: {where}: {expert} is a {expert_type} model but the base is a {model_type} model; "
            "experts must be fine-tuned from the base"
        )
    with _wrap(label, where, lambda: open_checkpoint(expert)) as ckpt:
        shapes = {n: (tuple(i.shape), i.dtype.is_floating_point) for n, i in ckpt.tensors.items()}
    for name, (shape, floating) in base_shapes.items():
        if name not in shapes:
            if floating:
                raise MergesmithError(
                    f"{label}: {where}: tensor {name!r} of the base is missing from {expert}; experts must share the base's architecture"
                )
        elif shapes[name][0] != shape:
            raise MergesmithError(
                f"{label}: {where}: tensor {name!r} is {list(shapes[name][0])} in {expert} but {list(shape)} in the base; "
                "experts must share the base's architecture"
            )
    extra = next((n for n, (_, floating) in shapes.items() if floating and n not in base_shapes), None)
    if extra is not None:
        raise MergesmithError(
            f"{label}: {where}: tensor {extra!r} of {expert} is not in the base; experts must share the base's architecture"
        )


def _load_head(label: str, where: str, path: Path) -> nn.Linear:
    from mergesmith.io.safetensors_file import SafetensorsFile

    # Our bounded reader (a regular file, a validated header), not safetensors.load_file: a FIFO would hang it.
    try:
        head_file = SafetensorsFile(path)
    except MergesmithError as exc:
        raise MergesmithError(f"{label}: {where}: not a readable safetensors file: {exc}") from None
    try:
        infos = head_file.tensors
        rows = infos["weight"].shape[0] if "weight" in infos and len(infos["weight"].shape) == 2 else 0
        if rows > MAX_LABELS:
            raise MergesmithError(
                f"{label}: {where}: {path}: 'weight' has {rows} rows, more than the {MAX_LABELS} labels a task may have"
            )
        tensors = {name: head_file.read(info) for name, info in infos.items() if name in ("weight", "bias")}
    finally:
        head_file.close()
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or weight.dim() != 2 or not weight.is_floating_point():
        raise MergesmithError(
            f"{label}: {where}: {path} has no 2-D float tensor 'weight' [labels, features]; save the head as {{'weight': W, 'bias': b}}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise MergesmithError(
            f"{label}: {where}: {path}: 'bias' is {list(bias.shape)} but 'weight' has {weight.shape[0]} rows; they must match"
        )
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight.float())
        if bias is None:
            head.bias.zero_()  # zero-shot heads (text embeddings) have no bias
        else:
            head.bias.copy_(bias.float())
    return head


def _encode(featurizer, records: list[Record], labels: list[int]):
    if featurizer.modality == "text":
        return featurizer.encode([Example(str(r.input), label) for r, label in zip(records, labels)])
    return featurizer.encode([r.input for r in records], labels)
