"""Checkpoint reading (safetensors by positioned reads, legacy torch files safely) and streaming sharded writing."""

from mergesmith.io.checkpoint import Checkpoint, open_checkpoint
from mergesmith.io.sizes import parse_size
from mergesmith.io.tensor_info import TensorInfo
from mergesmith.io.writer import ShardedWriter, ShardPlan, plan_shards

__all__ = ["Checkpoint", "ShardPlan", "ShardedWriter", "TensorInfo", "open_checkpoint", "parse_size", "plan_shards"]
