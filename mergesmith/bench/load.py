"""The pool a bench mode runs on: a built-in profile (data and expert zoo from the cache) or a user pool YAML."""

from __future__ import annotations

from pathlib import Path

from mergesmith.errors import MergesmithError


def load_bench_pool(profile, pool, cache_dir, seed, progress, echo):
    """The bench's pool, built exactly as ``run_bench`` builds it (built-in profile or a user pool YAML)."""
    from mergesmith.bench.run import _profile_pool  # the one place the built-in pool is assembled
    from mergesmith.bench.sources import default_cache_dir, ensure_writable
    from mergesmith.bench.tasks import PROFILES, build_tasks

    if pool is not None:
        from mergesmith.bench.pool import build_pool, check_pool

        return build_pool(check_pool(pool), seed=seed, progress=progress, echo=echo)
    profile = profile or "default"
    if profile not in PROFILES:
        raise MergesmithError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cache_dir = ensure_writable(Path(cache_dir) if cache_dir else default_cache_dir())
    tasks = build_tasks(profile, cache_dir, seed=seed, progress=progress)
    return _profile_pool(profile, tasks, cache_dir, seed, progress, echo)
