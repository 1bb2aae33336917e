"""Models to and from checkpoint directories (PaddleNLP's layout), under any tensor-parallel degree.

A checkpoint directory holds config.json, the tokenizer files and the weights (weights.py reads
and writes every weight layout). Loading takes this rank's share of the weights whatever the
degree on disk; saving gathers the shards (or keeps one file per rank) and writes atomically.
"""

import os
import shutil
from typing import Callable, Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from .atomic import atomic_directory
from .config import BloomConfig
from .parallel.layers import split_axis
from .runtime import ParallelContext
from .weights import WEIGHTS, read_state_for_rank, save_weights, shard_name

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


# ---------------------------------------------------------------- loading


def assign_full_values(model: paddle.nn.Layer, full: Dict[str, np.ndarray], where: str = "") -> None:
    """Set the model's parameters named in `full` from full-size arrays, each rank taking its slice
    along the parameter's split axis: the same values at any tensor-parallel degree."""
    ctx = model.parallel
    for name, param in model.named_parameters():
        if name not in full:
            continue
        axis = split_axis(param) if ctx.tp_degree > 1 else None
        expected = [n * ctx.tp_degree if i == axis else n for i, n in enumerate(param.shape)]
        if list(full[name].shape) != expected:
            raise ValueError(f"{where or 'weights'}: {name} has shape {list(full[name].shape)}, expected {expected}")
        value = full[name] if axis is None else np.split(full[name], ctx.tp_degree, axis=axis)[ctx.tp_rank]
        param.set_value(value.astype(np.float32))


def load_into(model: paddle.nn.Layer, directory: str, strict: bool = True, autodist: bool = False) -> None:
    ctx = model.parallel
    state = read_state_for_rank(directory, ctx.tp_degree, ctx.tp_rank, autodist)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if strict and missing:
        raise ValueError(f"{directory}: checkpoint lacks {len(missing)} parameters, e.g. {missing[0]}")
    for name, param in own.items():
        if name in state:
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{directory}: {name} has shape {list(value.shape)}, the model expects {list(param.shape)}"
                )
            param.set_value(value.astype(param.numpy().dtype if param.dtype != paddle.bfloat16 else np.float32))


# ---------------------------------------------------------------- saving


def copy_tokenizer(src_dir: str, dst_dir: str) -> None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def gather_full_state(state: Dict[str, paddle.Tensor], ctx: ParallelContext) -> Optional[Dict[str, np.ndarray]]:
    """Merge the tensor-parallel shards of `state`, live parameters of a model built for `ctx`
    (collective: every TP rank must call it).

    Returns the full state on TP rank 0, None elsewhere.
    """
    out = {}
    for name, tensor in state.items():
        axis = split_axis(tensor)
        if ctx.tp_degree > 1 and axis is not None:
            parts = []
            dist.all_gather(parts, tensor.detach(), group=ctx.tp_group)
            value = np.concatenate([p.numpy() for p in parts[: ctx.tp_degree]], axis=axis)
        else:
            value = tensor.detach().numpy()
        out[name] = value
    return out if ctx.tp_rank == 0 else None


def save_checkpoint(
    model,
    directory: str,
    config: BloomConfig,
    tokenizer_dir: Optional[str] = None,
    merge: bool = True,
    extra: Optional[Callable[[str], None]] = None,
) -> None:
    """Write the model to `directory` atomically (collective under TP).

    merge=True writes one ordinary checkpoint; merge=False one shard per TP rank.
    `extra(tmp_dir)` may add files (optimizer state, adapter configs) before the rename.
    """
    ctx = model.parallel
    state = {k: v for k, v in model.state_dict().items()}
    if merge or ctx.tp_degree == 1:
        full = gather_full_state(state, ctx)
        shards = None
    else:
        full = None
        gathered = []
        dist.all_gather_object(gathered, {k: v.numpy() for k, v in state.items()}, group=ctx.tp_group)
        shards = gathered[: ctx.tp_degree]
    if not ctx.is_main:
        _barrier()
        return
    with atomic_directory(directory) as tmp:
        saved = BloomConfig(**{**config.__dict__})
        if full is not None:
            saved.tensor_parallel_degree = 1
            save_weights(full, os.path.join(tmp, WEIGHTS))
        else:
            saved.tensor_parallel_degree = ctx.tp_degree
            for rank, shard in enumerate(shards):
                save_weights(shard, os.path.join(tmp, shard_name(rank)))
        saved.save(tmp)
        if tokenizer_dir:
            copy_tokenizer(tokenizer_dir, tmp)
        if extra is not None:
            extra(tmp)
    _barrier()


def _barrier() -> None:
    if dist.get_world_size() > 1:
        dist.barrier()
