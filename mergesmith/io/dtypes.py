"""The safetensors dtype names we read and write, and their torch dtypes."""

from __future__ import annotations

import torch

# Name in the safetensors header -> torch dtype. Element sizes come from torch (dtype.itemsize).
SAFETENSORS_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# fp8 exists only in newer torch builds; accept it where torch can represent it.
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        SAFETENSORS_TO_TORCH[_name] = getattr(torch, _attr)

TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_TO_TORCH.items()}


def safetensors_dtype_name(dtype: torch.dtype) -> str:
    """The header name of a torch dtype; ValueError for dtypes safetensors (or this reader) cannot store."""
    try:
        return TORCH_TO_SAFETENSORS[dtype]
    except KeyError:
        supported = ", ".join(str(d).removeprefix("torch.") for d in TORCH_TO_SAFETENSORS)
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors here; supported: {supported}") from None
