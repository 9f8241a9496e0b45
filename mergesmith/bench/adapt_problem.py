"""The adapt view of a bench pool: an ``AdaptProblem`` (``mergesmith.adapt.problem``) from a pool YAML or a built-in
profile, for ``mergesmith adapt`` and the bench's adapt rows.

The adapt package never imports the bench: the problem reaches the pool's encoder and data through the pool's
featurizer, which implements ``mergesmith.adapt.featurizer.Featurizer``. The heads and the data's labels are checked
against each other here, once, before any method runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesmith.adapt.problem import AdaptProblem, AdaptTask, Unlabeled
from mergesmith.bench.encoder import EncodedSplit
from mergesmith.bench.features import ImageFeaturizer, ImageSplit, read_model_config
from mergesmith.bench.heads import HEAD_FILE, Head
from mergesmith.bench.load import load_bench_pool
from mergesmith.bench.pool import Pool
from mergesmith.errors import MergesmithError


def load_problem(
    *,
    pool: str | Path | None = None,
    profile: str | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    protocol: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> AdaptProblem:
    """An AdaptProblem from a pool YAML (``mergesmith.bench.pool``) or a built-in bench profile ("default", "mini").
    The pretrained model's linear probes are not built: no adapt method reads them."""
    if (pool is None) == (profile is None):
        raise MergesmithError("give either a pool YAML (--pool) or a built-in profile (--profile), not both or neither")
    return problem_from_pool(
        load_bench_pool(profile, pool, cache_dir, seed, progress, echo, probes=False, protocol=protocol)
    )


def problem_from_pool(pool: Pool) -> AdaptProblem:
    """The adapt view of a bench pool. Checks that every head and every expert's own head fit the task's labels."""
    width = _feature_width(pool)
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
            unlabeled = Unlabeled(_without_labels(t.test), pool.featurizer.modality)
        tasks.append(AdaptTask(t.name, head, unlabeled, t.validation, tuple(t.label_names)))
    return AdaptProblem(Path(pool.base_dir), {t.name: Path(t.expert) for t in pool.tasks}, tasks, pool.featurizer)


def _without_labels(split: EncodedSplit | ImageSplit) -> EncodedSplit | ImageSplit:
    """The split's inputs with an empty label tensor (an image split gets its own pixel cache)."""
    if isinstance(split, ImageSplit):
        return ImageSplit(split.paths, [])
    return EncodedSplit(split.ids, split.labels[:0])


def _feature_width(pool: Pool) -> int:
    config = read_model_config(pool.base_dir)
    featurizer = pool.featurizer
    if isinstance(featurizer, ImageFeaturizer):
        return featurizer.feature_width(config, featurizer.kind)
    return featurizer.feature_width(config)


def _check_expert_head(task: str, expert: Path, head: Head) -> None:
    """An expert saved with its own head (``task_head.safetensors``) must have been trained on the task's labels."""
    from safetensors import safe_open

    path = expert / HEAD_FILE
    if not path.is_file():
        return
    try:
        with safe_open(str(path), "pt") as f:
            shape = tuple(f.get_slice("weight").get_shape()) if "weight" in f.keys() else None
    except Exception:  # unreadable heads are reported by the pool checker when they are used
        return
    if shape is not None and shape != (head.out_features, head.in_features):
        raise MergesmithError(
            f"task {task!r}: expert {expert} was trained with a head of shape {list(shape)} but the pool's head for the "
            f"task is {[head.out_features, head.in_features]}; the expert's label space differs from the task's: pair each task with "
            "its own expert"
        )


__all__ = ["load_problem", "problem_from_pool"]
