"""Continual merging: add one expert at a time to an existing merge, in memory constant in the number merged.

``CONTINUAL_METHODS`` is the catalogue (a plain dict); ``continual_add`` streams one step from checkpoints on disk;
``continual_add_state_dicts`` does the same step in memory.
"""

from __future__ import annotations

from mergesmith.continual._spec import ContinualMethod
from mergesmith.continual.catalogue import CONTINUAL_METHODS


def __getattr__(name: str):
    # the drivers import the io layer; keep ``import mergesmith.continual`` light for the CLI
    if name in ("continual_add", "continual_add_state_dicts", "start_state_dict", "ContinualResult"):
        from mergesmith.continual import add

        return getattr(add, name)
    raise AttributeError(name)


__all__ = [
    "CONTINUAL_METHODS",
    "ContinualMethod",
    "continual_add",
    "continual_add_state_dicts",
    "start_state_dict",
    "ContinualResult",
]
