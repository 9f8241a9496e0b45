"""The optional dependencies: which extra of ``pip install 'mergesmith[EXTRA]'`` installs which module, and which
extra each command needs. ``merge``, ``plan``, ``methods`` and ``continual`` need none (torch, safetensors, pydantic,
pyyaml, click, tqdm, numpy, huggingface_hub are always installed); pyproject.toml's extras list the same packages.

The CLI checks a command's modules before it starts (``require``); a module missing later still reaches the CLI's
error handler as a ModuleNotFoundError, which ``missing_module_message`` turns into one line naming the extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

# extra -> the top-level modules it installs (pip names are the same); the first extra holding a module is the
# smallest one to suggest for it.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hf": ("transformers",),  # load_merged, protect --verify, demo
    "inspect": ("matplotlib", "rich"),
    "adapt": ("transformers", "optuna"),  # optuna: Bayesian model merging's prior search
    "bench": ("transformers", "matplotlib", "rich", "rdata", "optuna", "psutil"),  # rdata: the built-in tasks' data
}

# command -> the extra it needs
COMMAND_EXTRAS: dict[str, str] = {
    "bench": "bench",
    "adapt": "adapt",
    "inspect": "inspect",
    "protect": "hf",
    "demo": "hf",
}


def extra_for(module: str, command: str | None = None) -> str | None:
    """The extra that installs ``module`` (a dotted name counts as its top-level package): the command's own when it
    holds the module, else the first that does; None for a module no extra installs."""
    top = module.split(".")[0]
    own = COMMAND_EXTRAS.get(command.split()[0]) if command else None
    if own is not None and top in EXTRAS[own]:
        return own
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_module_message(module: str | None, command: str) -> str | None:
    """``mergesmith COMMAND needs MODULE; install it with pip install 'mergesmith[EXTRA]'``, or None when ``module``
    is not an optional dependency (a broken installation, not a missing extra)."""
    if not module:
        return None
    extra = extra_for(module, command)
    if extra is None:
        return None
    return f"mergesmith {command} needs {module.split('.')[0]}; install it with pip install 'mergesmith[{extra}]'"


def require(command: str, modules: Iterable[str] | None = None) -> None:
    """Raise ModuleNotFoundError for the first of ``modules`` (default: every module of the command's extra) that is
    not installed, so a command fails before its work rather than after it."""
    wanted = EXTRAS[COMMAND_EXTRAS[command]] if modules is None else tuple(modules)
    for module in wanted:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
