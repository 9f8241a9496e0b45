"""Property tests: mutated configs, safetensors headers and shard indexes either read correctly or are refused
with a MergesmithError; never an unexplained exception."""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from mergesmith.config import MergeConfig, load_config
from mergesmith.errors import MergesmithError
from mergesmith.io import open_checkpoint
from mergesmith.io.safetensors_file import SafetensorsFile
from mergesmith.io.safetensors_header import read_header

FUZZ = settings(
    max_examples=80, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# ---- config loader -----------------------------------------------------------------------------------------------

VALID_CONFIG = {
    "merge_method": "ties",
    "base_model": "base",
    "parameters": {"weight": 1.0, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.5}]},
    "models": [{"model": "a", "parameters": {"weight": [0.2, 0.8]}}, {"model": "b"}],
    "dtype": "bfloat16",
    "seed": 3,
}
PATHS = [
    (),
    ("parameters",),
    ("parameters", "density"),
    ("models",),
    ("models", 0),
    ("models", 0, "parameters"),
    ("models", 0, "parameters", "weight"),
    ("models", 1),
]
KEYS = [
    "merge_method",
    "base_model",
    "parameters",
    "models",
    "slices",
    "dtype",
    "seed",
    "weight",
    "density",
    "model",
    "filter",
    "value",
    "layer_range",
    "sources",
    "tokenizer_source",
    "lambda",
    "bogus",
    0,
    1,
]


def _mutate(config, path, key, value, delete: bool):
    node = config
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return config
    if isinstance(node, dict):
        if delete:
            node.pop(key, None)
        else:
            node[str(key)] = value
    elif isinstance(node, list) and node:
        index = key if isinstance(key, int) and key < len(node) else 0
        if delete:
            node.pop(index)
        else:
            node[index] = value
    return config


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(KEYS), JSON, st.booleans()), min_size=1, max_size=4),
)
def test_mutated_configs_load_or_raise_a_config_error(mutations):
    config = json.loads(json.dumps(VALID_CONFIG))
    for path, key, value, delete in mutations:
        config = _mutate(config, path, key, value, delete)
    try:
        loaded = load_config(config)
    except MergesmithError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(loaded, MergeConfig)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_yaml_text_loads_or_raises_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except MergesmithError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(
    st.sampled_from(
        [
            "!!python/object/apply:os.system ['true']",
            "!!python/name:os.system",
            "!!binary aGk=",
            "!!set {a: null}",
            "&a [*a]",
            "!!timestamp 2001-12-14",
            "{a: !!float nan}",
        ]
    )
)
def test_tagged_yaml_never_constructs_objects(tag):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(f"merge_method: linear\nmodels: [{{model: a}}]\nname: {tag}\n", encoding="utf-8")
        try:
            config = load_config(path)
        except MergesmithError:
            return
        assert isinstance(config.name, str) or config.name is None


# ---- safetensors header ------------------------------------------------------------------------------------------


def _valid_file() -> tuple[dict, bytes]:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(4, dtype=torch.float16),
        "c": torch.tensor([1, 2, 3], dtype=torch.int64),
        "empty": torch.zeros(0, 5),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


HEADER, DATA = _valid_file()
ENTRY_FIELDS = ["dtype", "shape", "data_offsets", "extra"]
FIELD_VALUES = st.one_of(
    JSON,
    st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F64", "Q4"]),
    st.lists(st.integers(-3, 40), max_size=4),
)


def _check_read(path: Path) -> None:
    """Open with our reader: a MergesmithError, or tensors that match safetensors' own reader exactly."""
    try:
        tensors, _, data_start = read_header(path)
    except MergesmithError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    size = path.stat().st_size
    for info in tensors.values():
        assert info.nbytes == math.prod(info.shape) * info.dtype.itemsize
        assert data_start <= info.offset and info.offset + info.nbytes <= size
    reader = SafetensorsFile(path)
    try:
        with safe_open(path, framework="pt") as reference:
            assert sorted(reference.keys()) == sorted(tensors)
            for name, info in tensors.items():
                assert torch.equal(reader.read(info), reference.get_tensor(name)), name
    finally:
        reader.close()


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "empty", "__metadata__", "new"]),
            st.sampled_from(ENTRY_FIELDS),
            FIELD_VALUES,
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_header_fields_read_correctly_or_are_refused(mutations):
    header = json.loads(json.dumps(HEADER))
    for name, field, value, delete in mutations:
        entry = header.setdefault(name, {})
        if not isinstance(entry, dict) or name == "__metadata__":
            header[name] = value if not delete else header.pop(name, None)
            continue
        if delete:
            entry.pop(field, None)
        else:
            entry[field] = value
    header = {k: v for k, v in header.items() if v is not None or k != "__metadata__"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + DATA)
        _check_read(path)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 8 + 400), st.integers(0, 255)), min_size=1, max_size=4), st.integers(-40, 0))
def test_mutated_header_bytes_read_correctly_or_are_refused(flips, cut):
    text = json.dumps(HEADER).encode()
    raw = bytearray(struct.pack("<Q", len(text)) + text + DATA)
    for position, byte in flips:
        raw[position % len(raw)] = byte
    if cut:
        raw = raw[:cut]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(bytes(raw))
        _check_read(path)


# ---- shard index -------------------------------------------------------------------------------------------------

SHARDS = {
    "model-00001-of-00002.safetensors": {"x": torch.ones(2, 2), "y": torch.zeros(3)},
    "model-00002-of-00002.safetensors": {"z": torch.arange(4.0)},
}
SHARD_NAMES = st.sampled_from(
    [
        *SHARDS,
        "",
        ".",
        "..",
        "../model-00001-of-00002.safetensors",
        "/etc/passwd",
        "sub/model.safetensors",
        "missing.safetensors",
        "model-00001-of-00002.safetensors\0",
    ]
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["x", "y", "z", "w", ""]), SHARD_NAMES | JSON, max_size=5),
    st.sampled_from(["weight_map", "weights", "metadata"]),
    st.booleans(),
)
def test_mutated_indexes_open_correctly_or_are_refused(weight_map, key, wrap):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        for name, tensors in SHARDS.items():
            save_file(tensors, str(root / name))
        index = {key: weight_map} if wrap else weight_map
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
        try:
            checkpoint = open_checkpoint(root)
        except MergesmithError as exc:
            assert "\n" not in str(exc)
            return
        with checkpoint:
            expected = {name: t for tensors in SHARDS.values() for name, t in tensors.items()}
            for name, info in checkpoint.tensors.items():
                assert info.path.parent == root  # nothing outside the model directory is ever opened
                assert torch.equal(checkpoint.read(name), expected[name])
            assert set(checkpoint.tensors) <= set(expected)
