"""Helpers for the io tests: a tiny Llama and a byte-level safetensors builder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)


def tiny_llama_model(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).to(dtype).eval()


def raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", header_len: int | None = None) -> Path:
    """Write a safetensors file byte by byte, so tests can make every kind of corrupt header."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)
    return path
