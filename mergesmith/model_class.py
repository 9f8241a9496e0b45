"""The transformers class a model directory loads with: the one its config.json ``architectures`` names.

Only transformers' own model classes count (the names its Auto mappings list); any other name (a typo, a class of
remote code, ``os.system``) falls back to ``AutoModel``, which loads the architecture's bare model. Remote code is
never run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from mergesmith.io.parse import read_json


@lru_cache(maxsize=1)
def known_class_names() -> frozenset[str]:
    """Every model class name in transformers' Auto mappings (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` and the rest)."""
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for attribute in dir(modeling_auto):
        if attribute.endswith("_MAPPING_NAMES"):
            for value in getattr(modeling_auto, attribute).values():
                names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


def architecture_class(architectures: Any) -> Any:
    """The transformers class ``architectures[0]`` names, or None when it names none of transformers' own."""
    import transformers

    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return None
    name = architectures[0]
    if name not in known_class_names():
        return None
    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) and hasattr(cls, "from_pretrained") else None


def read_architectures(directory: Path) -> Any:
    config = read_json(
        Path(directory) / "config.json", what="config.json", root=directory, fix="restore the config.json of the model"
    )
    return config.get("architectures")


def load_pretrained(directory: Path) -> Any:
    """The model in ``directory`` as the class its config.json names (``AutoModel`` when it names none), eval mode."""
    cls = architecture_class(read_architectures(directory))
    if cls is None:
        from transformers import AutoModel

        return AutoModel.from_pretrained(directory, trust_remote_code=False).eval()
    return cls.from_pretrained(directory).eval()


def bare_model_class_name(model_type: Any) -> str | None:
    """The name of the architecture's bare model class (``AutoModel``'s choice: "BertModel" for "bert"), or None."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None
    return name if isinstance(name, str) else None
