"""mergesmith: model merging for Hugging Face checkpoints.

The public API is imported lazily so the CLI starts fast: ``mergesmith.merge``, ``mergesmith.merge_state_dicts``,
``mergesmith.plan_merge``, ``mergesmith.METHODS``.
"""

__version__ = "0.1.0"

_LAZY = {
    "merge": "mergesmith.api",
    "merge_state_dicts": "mergesmith.api",
    "merge_state_dicts_per_task": "mergesmith.engine.side_outputs",
    "load_merged": "mergesmith.loading",
    "plan_merge": "mergesmith.api",
    "MergeResult": "mergesmith.api",
    "METHODS": "mergesmith.methods",
    "MergesmithError": "mergesmith.errors",
    "continual_add": "mergesmith.continual",
    "continual_add_state_dicts": "mergesmith.continual",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mergesmith' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names are attributes too (``dir(mergesmith)``, tab completion), though not imported until used
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
