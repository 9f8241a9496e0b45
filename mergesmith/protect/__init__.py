"""MergeLock (Wang et al. 2025, "Model Unmerging"): function-preserving attention transforms that make a model
unmergeable. ``protect_checkpoint`` writes the protected copy; ``verify_protection`` checks it."""

from mergesmith.protect.layout import AttentionLayout, detect_layout
from mergesmith.protect.lock import ProtectResult, protect_checkpoint
from mergesmith.protect.verify import VerifyReport, verify_protection

__all__ = [
    "AttentionLayout",
    "ProtectResult",
    "VerifyReport",
    "detect_layout",
    "protect_checkpoint",
    "verify_protection",
]
