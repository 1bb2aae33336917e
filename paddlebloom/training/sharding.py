"""ZeRO stage 1 on fleet: N data-parallel ranks share one copy of the optimizer state.

`--sharding stage1 [--sharding_parallel_degree N]` (PaddleNLP's flags and meaning) wraps the
AdamW in fleet's own DygraphShardingOptimizer. fleet partitions the trainable parameters over the
N ranks of the sharding group (whole tensors, largest first, each to the least-loaded rank);
after backward every gradient is reduced onto the rank that owns its parameter
(`reduce_gradients`), the owner alone updates it with its Adam moments and broadcasts the new
value (`step`). Sharding ranks read different data (PaddleNLP's dataset_rank), so
world = data parallel x sharding x tensor parallel.

What fleet runs over gloo on CPU (paddle 3.3.1, measured):
- stage 1, DygraphShardingOptimizer: its reduce and broadcast work over gloo; a run ends with the
  single-process weights (tests/test_sharding.py).
- stage 1 with split parameters (DygraphShardingOptimizerV2, an exact 1/N split) needs
  reduce_scatter, which ProcessGroupGloo does not implement; stage 1 tensor fusion and comm
  overlap build fleet's FusedCommBuffer, which asserts a gpu/npu/xpu device. So the split is by
  whole tensors: 1/N up to one tensor's state.
- stage 2 / stage 3 (paddle.distributed.sharding.group_sharded_parallel) assert a
  gpu/xpu/custom device, and their optimizer a CUDA or XPU build.
"""

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.distributed import fleet
from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.dygraph_sharding_optimizer import (
    DygraphShardingOptimizer,
)

from ..runtime import device_for_backend, parallel_context, world_size
from .arguments import parse_sharding


def resolve_sharding_degree(args) -> int:
    """The sharding group size the flags ask for (1: no sharding).

    Raises ValueError naming the flag where fleet cannot run the stage on this backend.
    """
    text = getattr(args, "sharding", "") or ""
    stage, offload = parse_sharding(text)
    if stage is None:
        return 1
    if stage in ("stage2", "stage3"):
        if device_for_backend() == "cpu":
            raise ValueError(
                f"--sharding {stage} needs a GPU: Paddle 3.3.1 runs it in group_sharded_parallel, which supports only "
                "gpu, xpu and custom devices; on CPU use --sharding stage1 (optimizer-state sharding, fleet's "
                "DygraphShardingOptimizer)"
            )
        raise ValueError(
            f"--sharding {stage} (group_sharded_parallel) is not wired into this trainer yet; use --sharding stage1"
        )
    if offload:
        raise ValueError('--sharding "stage1 offload": offload applies to stage2/stage3 only (as in PaddleNLP)')
    degree = getattr(args, "sharding_parallel_degree", -1)
    if degree <= 0:  # PaddleNLP's -1: every rank of a tensor-parallel slot shares one copy
        degree = max(1, world_size() // max(1, getattr(args, "tensor_parallel_degree", 1)))
    return degree


def shard_optimizer_state(optimizer):
    """fleet's stage-1 wrapper around `optimizer` when the sharding group has several ranks."""
    if parallel_context().sharding_degree == 1:
        return optimizer
    return DygraphShardingOptimizer(optimizer, fleet.get_hybrid_communicate_group())


def _require_sharded(optimizer):
    if not hasattr(optimizer, "reduce_gradients"):
        raise RuntimeError(
            "sharding is on: gradient sync and clipping need the fleet-sharded optimizer from build_optimizer"
        )
    return optimizer


def owned_parameters(optimizer, params):
    """The parameters this rank updates (all of them without sharding)."""
    if parallel_context().sharding_degree == 1:
        return list(params)
    return _require_sharded(optimizer).filter_parameters(list(params), fleet.get_hybrid_communicate_group())


def reduce_gradients_to_owners(optimizer, params):
    """fleet's stage-1 gradient reduction; returns this rank's parameters, whose gradients are
    now summed over the sharding group (the others' are stale and only get cleared).

    fleet averages (scales by 1/N, then sums); the trainer's loss is already normalised over
    every rank's tokens, so the owner's gradients are scaled back to the sum.
    """
    ctx = parallel_context()
    _require_sharded(optimizer).reduce_gradients(list(params), fleet.get_hybrid_communicate_group())
    mine = owned_parameters(optimizer, params)
    with paddle.no_grad():
        for p in mine:
            if p.grad is not None:
                p.grad.scale_(float(ctx.sharding_degree))
    return mine


def merged_optimizer_state(state: dict) -> dict:
    """The whole optimizer state from every sharding rank's part (collective over the group).

    This is what an unsharded run saves, so a checkpoint loads at any sharding degree: fleet's
    set_state_dict keeps the entries of the parameters the loading rank owns.
    """
    ctx = parallel_context()
    if ctx.sharding_degree == 1:
        return state
    parts = []
    dist.all_gather_object(parts, state, group=ctx.sharding_group)
    merged = {}
    for part in parts[: ctx.sharding_degree]:
        merged.update(part)
    return merged


def _nbytes(value) -> int:
    if isinstance(value, paddle.Tensor):
        return int(np.prod(value.shape)) * value.element_size()
    if isinstance(value, dict):  # master weights
        return sum(_nbytes(v) for v in value.values())
    return 0


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of optimizer state this rank holds (Adam moments, beta powers, master weights)."""
    return sum(_nbytes(v) for v in optimizer.state_dict().values())


def optimizer_state_bytes_per_rank(optimizer):
    """[bytes held by sharding rank 0, 1, ...] (collective over the sharding group)."""
    ctx = parallel_context()
    mine = optimizer_state_bytes(optimizer)
    if ctx.sharding_degree == 1:
        return [mine]
    parts = []
    dist.all_gather_object(parts, mine, group=ctx.sharding_group)
    return [int(b) for b in parts[: ctx.sharding_degree]]
