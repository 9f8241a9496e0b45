"""Manifests of earlier versions, rewritten into the current shape so that their outputs still load.

Before one manifest shape, four writers wrote four: a merge's ``mergesmith.json`` (inputs as model -> file -> hash,
``kind``/``tasks``/``side_outputs`` for per-task merges), a continual step's (inputs as role -> path and files), a
protected copy's (inputs as file -> hash, no version) and an adapt result's ``adapt.json`` (no hashes at all).
``upgrade_legacy`` maps each to the current fields; what it cannot know (an input's path, an output's hash) is left
out rather than guessed. The result is validated by ``mergesmith.io.manifest`` like any manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LEGACY_ADAPT_FILE = "adapt.json"


def upgrade_legacy(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The current manifest fields for ``data``, an earlier version's ``mergesmith.json`` or ``adapt.json``."""
    if path.name == LEGACY_ADAPT_FILE:
        return _adapt(data)
    method = str(data.get("method", ""))
    if method.startswith("continual/"):
        return _continual(data)
    if method == "mergelock":
        return _protect(data)
    return _merge(data)


def _merge(data: dict[str, Any]) -> dict[str, Any]:
    inputs = data.get("inputs") or {}
    side = data.get("side_outputs") or {}
    details = {key: data[key] for key in ("tensors", "tasks") if key in data}
    config = data.get("config") or {}
    return {
        "mergesmith_version": data.get("mergesmith_version", "unknown"),
        "kind": data.get("kind", "weights"),
        "method": data.get("method", "unknown"),
        "seed": data.get("seed"),
        "base_model": config.get("base_model") if isinstance(config, dict) else None,
        "config": config,
        "inputs": {name: {"path": name, "files": files} for name, files in _items(inputs)},
        "outputs": {**_mapping(data.get("outputs")), **_mapping(side)},
        "details": details,
    }


def _continual(data: dict[str, Any]) -> dict[str, Any]:
    inputs = data.get("inputs") or {}
    base = inputs.get("base", {}) if isinstance(inputs, dict) else {}
    return {
        "mergesmith_version": data.get("mergesmith_version", "unknown"),
        "kind": "continual",
        "method": data.get("method"),
        "paper": data.get("paper", ""),
        "base_model": base.get("path") if isinstance(base, dict) else None,
        "config": data.get("params") or {},
        "inputs": inputs,
        "outputs": data.get("outputs") or {},
        "details": {"step": data.get("step")},
    }


def _protect(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "mergesmith_version": data.get("mergesmith_version", "unknown"),
        "kind": "protected",
        "method": "mergelock",
        "paper": data.get("paper", ""),
        "seed": data.get("seed"),
        "config": {"seed": data.get("seed"), "strength": data.get("strength")},
        "inputs": {"model": {"path": "", "files": data.get("inputs") or {}}},  # the old shape kept no path
        "outputs": data.get("outputs") or {},
        "details": {key: data[key] for key in ("architecture", "attention_layers", "heads") if key in data},
    }


def _adapt(data: dict[str, Any]) -> dict[str, Any]:
    spec = data.get("spec") or {}
    spec = spec if isinstance(spec, dict) else {}
    experts = data.get("experts") or {}
    inputs = {"base": {"path": str(data.get("base_model", ""))}}
    inputs.update({f"expert:{task}": {"path": str(path)} for task, path in _items(experts)})
    return {
        "mergesmith_version": data.get("mergesmith_version", "unknown"),
        "kind": data.get("kind", "weights"),
        "method": spec.get("method", "adapt"),
        "paper": spec.get("paper", ""),
        "seed": spec.get("seed"),
        "base_model": data.get("base_model"),
        "config": spec.get("params") or {},
        "inputs": inputs,
        "details": {"spec": spec, "info": data.get("info") or {}, "tasks": data.get("tasks") or []},
    }


def _items(value: Any) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in value.items()] if isinstance(value, dict) else []


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
