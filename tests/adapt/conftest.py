from __future__ import annotations

import pytest

from tests.adapt.pools import build_text_pool


@pytest.fixture(scope="session")
def tiny_pool_yaml(tmp_path_factory):
    """The YAML of a tiny BERT pool (2 tasks, 2 experts); build your own copy when a test modifies files."""
    return build_text_pool(tmp_path_factory.mktemp("adapt_pool"))


@pytest.fixture(scope="session")
def tiny_problem(tiny_pool_yaml):
    from mergesmith.bench.adapt_problem import load_problem

    return load_problem(pool=tiny_pool_yaml, progress=False, echo=lambda _: None)
