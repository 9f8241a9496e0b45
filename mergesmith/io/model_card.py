"""The model card (README.md) of every directory mergesmith writes, rendered from its manifest.

Hugging Face front matter (tags, ``base_model``), the method and its paper, the input models, the configuration,
how to load it, and what a kind adds (per-task loading, an adapt specification, a continual sequence, MergeLock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from mergesmith.io.manifest import Manifest


@dataclass(frozen=True)
class CardText:
    """What a writer adds to the card its manifest gives: a title, tags, and markdown sections after the config."""

    title: str = "Merged model"
    tags: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()


def render_card(manifest: Manifest, text: CardText) -> str:
    front: dict[str, Any] = {"tags": ["mergesmith", "merge", *text.tags], "library_name": "transformers"}
    if manifest.base_model:
        front["base_model"] = [manifest.base_model]
    made_with = f"Made with [mergesmith](https://pypi.org/project/mergesmith/) using **{manifest.method}**"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=True).rstrip(),
        "---",
        f"# {text.title}",
        "",
        made_with + (f" ({manifest.paper})." if manifest.paper else "."),
        "",
        "## Input models",
        "",
    ]
    for label, model in manifest.inputs.items():
        named = f"`{model.path}`" if label == model.path else f"{label}: `{model.path}`"
        base = " (base)" if manifest.base_model and model.path == manifest.base_model and label != "base" else ""
        lines.append(f"- {named}{base}")
    config = yaml.safe_dump(_without_none(manifest.config), sort_keys=False).rstrip() if manifest.config else "{}"
    lines += ["", "## Configuration", "", "```yaml", config, "```", ""]
    for section in text.sections:
        lines += [section.rstrip(), ""]
    return "\n".join(lines)


def _without_none(value: Any) -> Any:
    """The configuration as a user writes it: unset (None) fields left out, at every depth."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def loading_section(task_example: str | None = None) -> str:
    """How to load the directory; ``task_example`` names a task when the directory holds one model per task."""
    call = f"mergesmith.load_merged(path, task={task_example!r})" if task_example else "mergesmith.load_merged(path)"
    return "\n".join(["## Loading", "", "```python", "import mergesmith", "", f"model = {call}", "```"])
