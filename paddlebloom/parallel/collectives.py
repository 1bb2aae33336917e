"""The four tensor-parallel communication ops, chosen by backend.

Megatron-style tensor parallelism needs four autograd ops over the tensor-parallel group:
  copy_to_tp        forward identity,         backward all-reduce   (fleet: c_identity)
  reduce_from_tp    forward all-reduce,       backward identity     (fleet: mp_allreduce)
  gather_from_tp    forward all-gather(last), backward split        (fleet: c_concat)
  scatter_to_tp     forward split(last),      backward all-gather   (fleet: c_split)

On NCCL (GPU) we call fleet's own fused ops: that is the upstream path, untouched.
On gloo (CPU) fleet's ops do not run (paddle 3.3.1: ProcessGroupGLOO rejects
`all_reduce with sync_op and use_calc_stream`, and c_identity / c_concat have no CPU kernel;
the README's "Upstream defects" table),
so the same four ops are built from synchronous `paddle.distributed.all_reduce` / `all_gather`.
Each op takes the parallel context of the model that calls it (the process's, from init_parallel,
when none is given).
"""

from typing import Optional

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer
from paddle.distributed.fleet.layers.mpu import mp_ops

from ..runtime import ParallelContext, parallel_context


def _sum_all(x, group):
    out = x.clone()
    dist.all_reduce(out, group=group)
    return out


def _gather_last(x, group, world):
    parts = []
    dist.all_gather(parts, x.contiguous() if hasattr(x, "contiguous") else x, group=group)
    return paddle.concat(parts[:world], axis=-1)


def _my_slice_last(x, rank, world):
    width = x.shape[-1] // world
    return x[..., rank * width : (rank + 1) * width]


class _CopyToTP(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return _sum_all(grad, ctx.group)


class _ReduceFromTP(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        return _sum_all(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _GatherFromTP(PyLayer):
    @staticmethod
    def forward(ctx, x, group, rank, world):
        ctx.rank, ctx.world = rank, world
        return _gather_last(x, group, world)

    @staticmethod
    def backward(ctx, grad):
        return _my_slice_last(grad, ctx.rank, ctx.world).clone()


class _ScatterToTP(PyLayer):
    @staticmethod
    def forward(ctx, x, group, rank, world):
        ctx.group, ctx.world = group, world
        return _my_slice_last(x, rank, world).clone()

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group, ctx.world)


def copy_to_tp(x, parallel: Optional[ParallelContext] = None):
    ctx = parallel or parallel_context()
    if ctx.tp_degree == 1:
        return x
    if ctx.backend == "nccl":
        return mp_ops._c_identity(x, group=ctx.tp_group)
    return _CopyToTP.apply(x, ctx.tp_group)


def reduce_from_tp(x, parallel: Optional[ParallelContext] = None):
    ctx = parallel or parallel_context()
    if ctx.tp_degree == 1:
        return x
    if ctx.backend == "nccl":
        return mp_ops._mp_allreduce(x, group=ctx.tp_group, use_calc_stream=True, use_model_parallel=True)
    return _ReduceFromTP.apply(x, ctx.tp_group)


def gather_from_tp(x, parallel: Optional[ParallelContext] = None):
    ctx = parallel or parallel_context()
    if ctx.tp_degree == 1:
        return x
    if ctx.backend == "nccl":
        return mp_ops._c_concat(x, group=ctx.tp_group)
    return _GatherFromTP.apply(x, ctx.tp_group, ctx.tp_rank, ctx.tp_degree)


def scatter_to_tp(x, parallel: Optional[ParallelContext] = None):
    ctx = parallel or parallel_context()
    if ctx.tp_degree == 1:
        return x
    if ctx.backend == "nccl":
        return mp_ops._c_split(x, group=ctx.tp_group)
    return _ScatterToTP.apply(x, ctx.tp_group, ctx.tp_rank, ctx.tp_degree)


def max_over_tp(x, parallel: Optional[ParallelContext] = None):
    """Element-wise max across the group, no gradient (used to stabilise the parallel softmax)."""
    ctx = parallel or parallel_context()
    if ctx.tp_degree == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=ctx.tp_group)
    return out
