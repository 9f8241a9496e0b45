"""The adapt package stands on its own: no module of it imports the bench (at module level or inside a function), and
the bench's featurizers implement the ``Featurizer`` protocol through which adapt reads a pool's encoder and data."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mergesmith.adapt
from mergesmith.adapt.featurizer import Featurizer

ADAPT = Path(mergesmith.adapt.__file__).parent


def imported_modules(source: str, package: str) -> list[str]:
    """Every module ``source`` (a module of ``package``) names in an import statement anywhere (functions included),
    or in an ``importlib.import_module`` / ``__import__`` call with a literal name; relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def _is_bench(name: str) -> bool:
    return name == "mergesmith.bench" or name.startswith("mergesmith.bench.")


def test_no_adapt_module_imports_the_bench():
    files = sorted(ADAPT.rglob("*.py"))
    assert len(files) > 15
    offenders = []
    for path in files:
        package = ".".join(("mergesmith", "adapt", *path.relative_to(ADAPT).parent.parts))
        offenders += [
            f"{path.name}: {name}"
            for name in imported_modules(path.read_text(encoding="utf-8"), package)
            if _is_bench(name)
        ]
    assert offenders == []


def test_the_import_check_sees_hidden_imports():
    source = (
        "def f():\n    from mergesmith.bench.run import x\n"
        "def g():\n    import importlib\n    return importlib.import_module('mergesmith.bench.pool')\n"
        "from mergesmith import bench\nfrom ..bench import zoo\nimport mergesmith.bench.features as features\n"
    )
    found = {name for name in imported_modules(source, "mergesmith.adapt") if _is_bench(name)}
    assert found == {
        "mergesmith.bench.run",
        "mergesmith.bench.run.x",
        "mergesmith.bench.pool",
        "mergesmith.bench",
        "mergesmith.bench.zoo",
        "mergesmith.bench.features",
    }


def _members(protocol: type) -> list[str]:
    return [name for name in vars(protocol) if not name.startswith("_")]


@pytest.mark.parametrize("cls_name", ["TextFeaturizer", "ImageFeaturizer"])
def test_bench_featurizers_implement_the_protocol(cls_name):
    from mergesmith.bench import features

    cls = getattr(features, cls_name)
    members = _members(Featurizer)
    assert {"modality", "representation", "load", "inputs", "select", "pool", "pool_hidden"} <= set(members)
    for name in members:
        assert hasattr(cls, name), f"{cls_name} lacks {name}"
        wanted = vars(Featurizer)[name]
        if inspect.isfunction(wanted):
            got = inspect.signature(getattr(cls, name))
            assert list(got.parameters) == list(inspect.signature(wanted).parameters), f"{cls_name}.{name}"
    assert Featurizer not in cls.__mro__  # structural: no inheritance
