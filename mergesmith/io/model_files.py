"""The files beside the weights: config.json, the tokenizer, generation and preprocessor configs, file hashes.

The model card and the manifest are written by ``mergesmith.io.model_dir`` (``model_card``, ``manifest``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mergesmith.errors import CheckpointError
from mergesmith.io.parse import read_json
from mergesmith.io.paths import open_regular

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
EXTRA_FILES = ("generation_config.json", "preprocessor_config.json")
# config.json keys that hold the number of transformer blocks (Llama/BERT, GPT-2, T5-style, a few others).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_DTYPE_NAMES = {
    "torch.float32": "float32",
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float64": "float64",
}


def write_config(
    source_config: Path | None,
    out_dir: Path,
    out_dtype: str | None,
    layer_count: int | None,
    *,
    architectures: list[str] | None = None,
) -> bool:
    """Copy config.json with the output dtype (and, after slicing, the new depth; and ``architectures`` when the
    directory holds the weights of another class than the source's). False when there is none."""
    if source_config is None or not os.path.lexists(source_config):
        return False
    source_config = Path(source_config)
    config: dict[str, Any] = read_json(
        source_config, what="config.json", root=source_config.parent, fix="fix or remove that config.json"
    )
    if out_dtype is not None:
        config["torch_dtype"] = out_dtype
        if "dtype" in config:
            config["dtype"] = out_dtype
    if layer_count is not None:
        old = None
        for key in LAYER_COUNT_KEYS:
            if isinstance(config.get(key), int):
                old = config[key]
                config[key] = layer_count
        types = config.get("layer_types")
        if isinstance(types, list) and old is not None and len(types) == old:
            if len(set(map(str, types))) > 1:
                raise CheckpointError(
                    f"{source_config}: layer_types mixes layer kinds; slicing such a model is not supported yet"
                )
            config["layer_types"] = [types[0]] * layer_count if types else []
    if architectures is not None:
        config["architectures"] = list(architectures)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def copy_side_files(source_root: Path | None, out_dir: Path) -> list[str]:
    """Tokenizer files and generation_config.json from the tokenizer source. Returns the names copied.

    Each must be a regular file resolving inside ``source_root`` (or its hub cache blobs): a symlink to a file
    elsewhere (a private key) is refused, never copied into an output people upload."""
    if source_root is None:
        return []
    return [name for name in TOKENIZER_FILES + EXTRA_FILES if copy_model_file(source_root, name, out_dir)]


def copy_model_file(source_root: Path, name: str, out_dir: Path) -> bool:
    """Copy ``source_root/name`` to ``out_dir/name`` if it exists (False if not); CheckpointError naming the file
    if it is not a regular file inside the model directory. Copied through the descriptor that was checked."""
    path = Path(source_root) / name
    if not os.path.lexists(path):
        return False
    fd, _ = open_regular(path, root=source_root)
    with os.fdopen(fd, "rb") as source, open(Path(out_dir) / name, "wb") as target:
        while block := source.read(8 << 20):
            target.write(block)
    return True


def dtype_name(dtype: Any) -> str:
    return _DTYPE_NAMES.get(str(dtype), str(dtype).replace("torch.", ""))


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
