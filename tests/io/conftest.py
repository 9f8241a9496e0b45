"""Fixtures for the io tests: tiny random transformers checkpoints, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.io.io_helpers import tiny_llama_model


def _saved(tmp_path_factory, dtype: torch.dtype, label: str) -> tuple[Path, dict[str, torch.Tensor]]:
    model = tiny_llama_model(dtype)
    directory = tmp_path_factory.mktemp(label)
    model.save_pretrained(directory, max_shard_size="200KB")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return directory, state


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny fp32 Llama saved by transformers in several safetensors shards, and its state dict."""
    return _saved(tmp_path_factory, torch.float32, "llama_f32")


@pytest.fixture(scope="session")
def tiny_llama_bf16_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    return _saved(tmp_path_factory, torch.bfloat16, "llama_bf16")
