"""Models of one merge must declare one architecture (mergekit's rule; ``--allow-crimes`` lifts it).

A model declares its architecture in config.json: ``architectures`` (the transformers classes, e.g.
``["LlamaForCausalLM"]``) and ``model_type`` (e.g. ``"llama"``). mergekit maps these two to one of its architecture
definitions and refuses a merge whose models map to different definitions unless ``--allow-crimes`` is given; here
the declared values are compared directly. Same tensor names and shapes are not enough: a LLaMA relabelled as Mistral
has LLaMA's tensors, but the merged config would load one family's weights into the other's code.

A model without config.json, or whose config.json names neither field, declares nothing and is compared with no one
(a bare safetensors file or a statistics-only model is still merged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergesmith.errors import ConfigError


@dataclass(frozen=True)
class Declared:
    """What one model's config.json says it is; a field is None when the config does not say."""

    architectures: tuple[str, ...] | None
    model_type: str | None

    def describe(self) -> str:
        classes = "/".join(self.architectures) if self.architectures else "no architectures"
        return f"{classes} (model_type {self.model_type})" if self.model_type else classes


@dataclass(frozen=True)
class Conflict:
    """Two models whose declarations differ: ``model`` against the first model that declared the same field."""

    model: str
    declared: Declared
    reference: str
    reference_declared: Declared


def declared_architecture(config: Mapping[str, Any]) -> Declared | None:
    """The architecture a parsed config.json declares, or None when it declares none."""
    archs = config.get("architectures")
    named = isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)
    architectures = tuple(archs) if isinstance(archs, list) and named else None
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) and model_type else None
    if architectures is None and model_type is None:
        return None
    return Declared(architectures, model_type)


def find_conflict(declared: Mapping[str, Declared | None]) -> Conflict | None:
    """The first model (in the mapping's order) whose architectures or model_type differs from the first model that
    declared that field; None when every model that declares a field agrees on it."""
    first_archs: tuple[str, Declared] | None = None
    first_type: tuple[str, Declared] | None = None
    for name, decl in declared.items():
        if decl is None:
            continue
        if decl.architectures is not None:
            if first_archs is None:
                first_archs = (name, decl)
            elif decl.architectures != first_archs[1].architectures:
                return Conflict(name, decl, *first_archs)
        if decl.model_type is not None:
            if first_type is None:
                first_type = (name, decl)
            elif decl.model_type != first_type[1].model_type:
                return Conflict(name, decl, *first_type)
    return None


def checkpoint_architectures(checkpoints: Mapping[str, Any]) -> dict[str, Declared | None]:
    """Model name -> its declared architecture, for opened checkpoints (``mergesmith.io.Checkpoint``)."""
    return {name: declared_architecture(ckpt.config()) for name, ckpt in checkpoints.items()}


def check_same_architecture(checkpoints: Mapping[str, Any], *, allow_crimes: bool = False) -> None:
    """Refuse models of different declared architectures unless ``allow_crimes``; reads config.json only."""
    if allow_crimes:
        return
    conflict = find_conflict(checkpoint_architectures(checkpoints))
    if conflict is not None:
        raise ConfigError(
            f"architectures differ: {conflict.model!r} is {conflict.declared.describe()} but {conflict.reference!r} "
            f"is {conflict.reference_declared.describe()}; merge models of one architecture, or pass --allow-crimes "
            f"(allow_crimes=True in Python) to merge them anyway"
        )
