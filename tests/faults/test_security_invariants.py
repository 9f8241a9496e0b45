"""Source-level guarantees behind SECURITY.md, checked over every module of the library (so a new module cannot
quietly add an unsafe load): pickles only through torch.load(weights_only=True), YAML only through safe loaders,
no eval/exec, no trust_remote_code, and network code only in the Hub resolver."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mergesmith"
MODULES = sorted(PACKAGE.rglob("*.py"))
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "_NoPythonTagsLoader"}
NETWORK_MODULES = {"requests", "urllib", "urllib3", "http", "socket", "httpx", "aiohttp", "huggingface_hub"}
HUB_RESOLVER = PACKAGE / "io" / "hub.py"
BOUNDED_READERS = PACKAGE / "io" / "parse.py"
PARSE_CALLS = {
    "json.load",
    "json.loads",
    "yaml.load",
    "yaml.load_all",
    "yaml.safe_load",
    "yaml.safe_load_all",
    "yaml.parse",
    "yaml.compose",
    "yaml.compose_all",
    "yaml.scan",
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


@pytest.fixture(scope="module")
def trees():
    return {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in MODULES}


def test_every_torch_load_is_weights_only(trees):
    seen = 0
    for path, tree in trees.items():
        for call in _calls(tree):
            if _dotted(call.func) == "torch.load":
                seen += 1
                value = _keyword(call, "weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
    assert seen >= 1  # the .bin reader uses it: the check is not vacuous


def test_no_raw_unpickling_eval_or_exec(trees):
    banned = {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "marshal.loads",
        "dill.load",
        "dill.loads",
        "eval",
        "exec",
        "compile",
        "yaml.unsafe_load",
        "yaml.full_load",
        "yaml.full_load_all",
    }
    for path, tree in trees.items():
        for call in _calls(tree):
            assert _dotted(call.func) not in banned, f"{path}:{call.lineno}: {_dotted(call.func)}"


def test_yaml_is_only_loaded_safely(trees):
    for path, tree in trees.items():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name in ("yaml.load", "yaml.load_all") and path != BOUNDED_READERS:
                loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                assert loader is not None and _dotted(loader).split(".")[-1] in SAFE_YAML_LOADERS, (
                    f"{path}:{call.lineno}"
                )


def test_the_bounded_yaml_reader_refuses_unsafe_loaders():
    import yaml

    from mergesmith.io.parse import parse_yaml

    with pytest.raises(TypeError, match="SafeLoader"):
        parse_yaml("a: 1", "x", loader=yaml.UnsafeLoader)


def test_json_and_yaml_are_parsed_only_by_the_bounded_readers(trees):
    """Python's parsers recurse per nesting level and convert any number: every parse goes through io/parse.py,
    which bounds size, depth and numbers first."""
    for path, tree in trees.items():
        if path == BOUNDED_READERS:
            continue
        for call in _calls(tree):
            assert _dotted(call.func) not in PARSE_CALLS, f"{path}:{call.lineno}: {_dotted(call.func)}"


def test_loader_subclass_is_a_safe_loader():
    import yaml

    from mergesmith.config import _NoPythonTagsLoader

    assert issubclass(_NoPythonTagsLoader, yaml.SafeLoader)


def test_remote_code_is_never_trusted(trees):
    for path, tree in trees.items():
        for call in _calls(tree):
            value = _keyword(call, "trust_remote_code")
            assert value is None or (isinstance(value, ast.Constant) and value.value is False), f"{path}:{call.lineno}"


def test_network_libraries_only_in_the_hub_resolver(trees):
    for path, tree in trees.items():
        if path == HUB_RESOLVER:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in NETWORK_MODULES, f"{path}:{node.lineno} imports {name}"
