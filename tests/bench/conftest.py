from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The bench cache: MERGESMITH_CACHE when set (CI reuses one), else a fresh one for the session."""
    explicit = os.environ.get("MERGESMITH_CACHE")
    return Path(explicit) if explicit else tmp_path_factory.mktemp("mergesmith-cache")
