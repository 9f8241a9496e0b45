"""Tiny random transformers checkpoints (a base and its "fine-tunes"), saved in Hugging Face layout.

Used by the demo and the tests: real architectures, real ``save_pretrained`` output (sharded safetensors with an
index), small enough to build in a second. An expert is the base plus a random task vector: dense gaussian noise
plus a sparse set of larger updates, so sparsifying methods (TIES, DARE) have something to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ARCHITECTURES = ("llama", "gpt2", "bert")


def tiny_config(arch: str, layers: int = 2):
    import transformers

    if arch == "llama":
        return transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=256,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=256, n_positions=128)
    if arch == "bert":
        return transformers.BertConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            vocab_size=256,
            max_position_embeddings=128,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def tiny_model(arch: str, layers: int = 2, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = tiny_config(arch, layers)
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "gpt2": transformers.GPT2LMHeadModel,
        "bert": transformers.BertForMaskedLM,
    }[arch]
    return model_cls(config).eval()


@dataclass
class TinyFamily:
    base: Path
    experts: list[Path]


def build_tiny_family(
    root: str | Path,
    arch: str = "llama",
    n_experts: int = 3,
    *,
    layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "200KB",
    noise: float = 0.01,
) -> TinyFamily:
    """Save a base model and ``n_experts`` perturbed copies under ``root`` (base/, expert_0/, ...)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = Path(root)
    base = tiny_model(arch, layers, seed).to(dtype)
    base_dir = root / "base"
    base.save_pretrained(base_dir, max_shard_size=max_shard_size)
    _save_tokenizer(base_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    experts = []
    for i in range(n_experts):
        gen = torch.Generator().manual_seed(seed * 1000 + i + 1)
        with torch.no_grad():
            for name, param in base.named_parameters():
                original = base_state[name].float()
                dense = torch.randn(original.shape, generator=gen) * noise
                sparse = (
                    (torch.rand(original.shape, generator=gen) < 0.05)
                    * torch.randn(original.shape, generator=gen)
                    * noise
                    * 10
                )
                param.copy_((original + dense + sparse).to(dtype))
        out = root / f"expert_{i}"
        base.save_pretrained(out, max_shard_size=max_shard_size)
        _save_tokenizer(out)
        experts.append(out)
    return TinyFamily(base_dir, experts)


def _save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over a 256-entry vocabulary, so outputs carry real tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i for i in range(2, 256)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)
