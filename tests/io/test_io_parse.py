"""The bounded readers (io/parse.py), the file rules (io/paths.py), tensor-name and shape checks, and row blocks
of any shape a header may claim."""

from __future__ import annotations

import os

import pytest

from mergesmith.errors import CheckpointError, ConfigError
from mergesmith.io.parse import MAX_DEPTH, json_nesting, parse_json, parse_yaml, read_json
from mergesmith.io.paths import FileIdentity, check_inside, check_unchanged, open_regular
from mergesmith.io.tensor_info import check_shape, name_problem
from mergesmith.methods._blocks import BLOCK_ELEMENTS, row_blocks


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[{{{"}', 1),
        (b'["\\"[[["]', 1),
        (b'"\\', 0),
        (b'"' + b'\\"' * 100_000, 0),  # an unterminated string of escaped quotes: linear, not quadratic
    ],
)
def test_json_nesting_ignores_brackets_in_strings(raw, depth):
    assert json_nesting(raw)[0] == depth


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100_000 + "]" * 100_000, "levels deep"),
        ('{"a": ' + "1" * 5000 + "}", "5000 digits"),
        ('{"a": -' + "1" * 5000 + "}", "digits"),
        ('{"a": 1e400}', "float64 range"),
        ('{"a": 1.' + "0" * 5000 + "}", "characters"),
        ("[1, 2]", "not an object"),
        ('{"a": ', "not valid JSON"),
    ],
)
def test_parse_json_refuses_with_one_line(text, fragment):
    with pytest.raises(CheckpointError) as exc:
        parse_json(text, "f.json")
    assert str(exc.value).startswith("f.json: ") and fragment in str(exc.value) and "\n" not in str(exc.value)


def test_parse_json_constants_and_duplicates_only_when_asked():
    assert parse_json('{"a": NaN, "a": 1}', "f") == {"a": 1}
    with pytest.raises(CheckpointError, match="NaN"):
        parse_json('{"a": NaN}', "f", constants=False)
    with pytest.raises(CheckpointError, match="'a' twice"):
        parse_json('{"a": 1, "a": 2}', "f", unique_keys=True)


def test_depth_at_the_bound_is_read():
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(nested, "f", top=list) is not None
    with pytest.raises(CheckpointError):
        parse_json("[" + nested + "]", "f", top=list)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: " + "[" * 10_000 + "]" * 10_000, "levels deep"),
        ("a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)) + "  " * 201 + "v\n", "levels deep"),
        ("a: " + "1" * 5000, "5000 characters"),
        ("a: 0x" + "f" * 5000, "characters"),
        ("a: !!int " + "1" * 5000, "cannot be read"),
        ("a: 2024-02-30", "cannot be read"),
        (
            "x0: &a0 [1,1,1,1,1,1,1,1,1,1]\n"
            + "".join(f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
            "aliases expanded",
        ),
        ("a: &x [1]\nb: " + "[" * 63 + "*x" + "]" * 63, "through alias"),
        ("- 1\n- 2", "not an object"),
        ("a: [1", "not valid YAML at line"),
        ("a: !!python/object/apply:os.system ['true']", "not valid YAML"),
    ],
)
def test_parse_yaml_refuses_with_one_line(text, fragment):
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, "c.yaml", error=ConfigError)
    assert str(exc.value).startswith("c.yaml: ") and fragment in str(exc.value) and "\n" not in str(exc.value)


def test_parse_yaml_reads_ordinary_yaml_with_anchors():
    text = "base: &b {density: 0.5, weight: [0.1, 0.2]}\nmodels:\n  - {model: a, parameters: *b}\nseed: 12\n"
    data = parse_yaml(text, "c.yaml")
    assert data["models"][0]["parameters"] == {"density": 0.5, "weight": [0.1, 0.2]} and data["seed"] == 12


def test_read_json_checks_the_size_before_reading(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(1 << 30)  # sparse: reading it would take a gigabyte
    with pytest.raises(CheckpointError, match="more than the 1024-byte limit"):
        read_json(path, limit=1024)


# ---- files ------------------------------------------------------------------------------------------------------


def test_open_regular_refuses_fifos_directories_and_missing_files(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    for name, fragment in (("pipe", "not a regular file"), (".", "a directory"), ("gone", "no such file")):
        with pytest.raises(CheckpointError, match=fragment):
            open_regular(tmp_path / name)


def test_check_inside_follows_symlinks(tmp_path):
    model, outside = tmp_path / "model", tmp_path / "outside"
    model.mkdir()
    outside.write_text("x")
    (model / "inner.txt").write_text("y")
    (model / "ok").symlink_to("inner.txt")
    (model / "out").symlink_to(outside)
    (model / "dotdot").symlink_to("../outside")
    assert check_inside(model, model / "ok") == (model / "inner.txt").resolve()
    for name in ("out", "dotdot"):
        with pytest.raises(CheckpointError, match="outside the model directory"):
            check_inside(model, model / name)


def test_check_inside_allows_only_the_same_hub_repository_blobs(tmp_path):
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "h1").write_text("w")
    (snapshot / "config.json").symlink_to("../../blobs/h1")
    assert check_inside(snapshot, snapshot / "config.json") == (repo / "blobs" / "h1").resolve()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (snapshot / "refs").symlink_to("../../refs/main")
    with pytest.raises(CheckpointError):
        check_inside(snapshot, snapshot / "refs")  # the repository folder, but not its blobs
    plain = tmp_path / "plain" / "snapshots" / "abc"  # looks like a snapshot, is not in a hub repository folder
    plain.mkdir(parents=True)
    (plain.parent.parent / "blobs").mkdir()
    (plain.parent.parent / "blobs" / "h").write_text("k")
    (plain / "f").symlink_to("../../blobs/h")
    with pytest.raises(CheckpointError):
        check_inside(plain, plain / "f")


def test_check_unchanged_tells_modified_replaced_and_removed(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abcd")
    fd, identity = open_regular(path)
    os.close(fd)
    check_unchanged(path, identity)
    changed = FileIdentity(identity.device, identity.inode, identity.size, identity.mtime_ns + 1)
    with pytest.raises(CheckpointError, match="was modified"):
        check_unchanged(path, changed)
    other = FileIdentity(identity.device, identity.inode + 1, identity.size, identity.mtime_ns)
    with pytest.raises(CheckpointError, match="replaced"):
        check_unchanged(path, other)
    path.unlink()
    with pytest.raises(CheckpointError, match="removed"):
        check_unchanged(path, identity)


# ---- names, shapes, row blocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("a\ud800", "surrogate"),
        ("a\nb", "U+000A"),
        ("a\x00", "U+0000"),
        ("\u2028", "U+2028"),
        ("\ufeffa", "U+FEFF"),
        ("x" * 1025, "1025 bytes"),
        ("__metadata__", "reserved"),
        (3, "not a string"),
    ],
)
def test_names_that_cannot_name_a_tensor(name, fragment):
    assert fragment in name_problem(name)


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj.weight", "模型.权重", "a" * 1024, "ü-ß"])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None


def test_shape_bounds():
    assert check_shape("f", "t", (2**44, 0)) == (2**44, 0)
    assert check_shape("f", "t", (4096, 4096, 64)) == (4096, 4096, 64)
    for shape in ((2**49, 0), (2**30, 2**30), (1,) * 17):
        with pytest.raises(CheckpointError):
            check_shape("f", "t", shape)


def test_row_blocks_of_any_accepted_shape_are_cheap():
    assert list(row_blocks((2**44, 0))) == [slice(0, 2**44)]
    huge = row_blocks((2**40, 2**8))
    assert len(huge) == 2**28 and huge[-1] == slice(2**40 - 2**12, 2**40)  # lazy: computed, not built
    assert list(row_blocks((0, 5))) == [slice(0, 0)]
    assert list(row_blocks((5, 3))) == [slice(0, 5)]
    rows = 3 * BLOCK_ELEMENTS // 1024 + 7
    blocks = list(row_blocks((rows, 1024)))
    assert blocks[0] == slice(0, 1024) and blocks[-1].stop == rows and len(blocks) == -(-rows // 1024)
