"""Task-vector diagnostics: cosine similarity, TIES sign conflicts, magnitudes, spectra and a mergeability verdict,
streamed over checkpoints tensor by tensor (``mergesmith inspect``)."""

from mergesmith.analysis.inspect import Diagnostics, inspect_task_vectors
from mergesmith.analysis.summary import Summary, summarize

__all__ = ["Diagnostics", "Summary", "inspect_task_vectors", "summarize"]
