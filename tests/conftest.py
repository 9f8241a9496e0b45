"""Shared fixtures: tiny random transformers checkpoints built once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the tests' caches (input file hashes, bench data unless MERGESMITH_CACHE is set) out of the user's home.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="mergesmith-test-cache-"))


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory):
    from mergesmith.tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("llama"), "llama", 3, layers=4)


@pytest.fixture(scope="session")
def gpt2_family(tmp_path_factory):
    from mergesmith.tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("gpt2"), "gpt2", 2, layers=2)


@pytest.fixture(scope="session")
def bert_family(tmp_path_factory):
    from mergesmith.tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("bert"), "bert", 2, layers=2)


@pytest.fixture(scope="session")
def llama_bf16_family(tmp_path_factory):
    import torch

    from mergesmith.tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("llama_bf16"), "llama", 2, layers=2, dtype=torch.bfloat16)


@pytest.fixture
def one_thread():
    """Tiny products on one intra-op thread, as the engine runs them (two threads only add hand-offs on a busy 2-core
    machine); the previous count is restored. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
