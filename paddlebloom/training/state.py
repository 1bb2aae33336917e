"""Training checkpoints: write atomically, rotate, find the newest, restore exactly.

checkpoint-N/ holds what the run trains (its adapter's directory: full weights in PaddleNLP's
layout, or the LoRA / prefix adapter), the optimizer state of every tensor-parallel rank (optimizer.pdopt or
optimizer.tpXX.pdopt; under sharding merged over the sharding group, so it loads at any
sharding degree) and trainer_state.json. Data order, learning rate and dropout seeds are
functions of the step number, so these files are all a resumed run needs to continue exactly.
"""

import json
import os
import re
import shutil
from typing import Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..adapter import adapter_of
from ..parallel.layers import split_axis
from ..runtime import parallel_context
from ..workarounds import (
    check_optimizer_state_covers,
    optimizer_state_by_parameter_path,
    optimizer_state_by_tensor_name,
)
from .sharding import merged_optimizer_state

STATE_FILE = "trainer_state.json"
_CKPT = re.compile(r"checkpoint-(\d+)$")


def optimizer_file(rank: int, degree: int) -> str:
    return "optimizer.pdopt" if degree == 1 else f"optimizer.tp{rank:02d}.pdopt"


def list_checkpoints(output_dir: str):
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, d)) for d in os.listdir(output_dir) if (m := _CKPT.match(d))]
    return [path for _, path in sorted(found) if os.path.isfile(os.path.join(path, STATE_FILE))]


def newest_checkpoint(output_dir: str) -> Optional[str]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def remove_stale_temporaries(output_dir: str) -> None:
    """Leftovers of a run killed while writing (never renamed into place, so never read)."""
    if parallel_context().is_main and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".") and ".tmp-" in name:
                path = os.path.join(output_dir, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _numpy_state(optimizer) -> dict:
    out = {}
    for key, value in optimizer.state_dict().items():
        out[key] = value.numpy() if isinstance(value, paddle.Tensor) else value
    return out


def save_training_checkpoint(model, optimizer, output_dir: str, step: int, state: dict, save_total_limit: int) -> str:
    """Collective under tensor parallelism; returns the checkpoint directory."""
    ctx = model.parallel
    directory = os.path.join(output_dir, f"checkpoint-{step}")
    # merging is collective over the sharding group; files key the state by parameter path (workarounds.py)
    whole = optimizer_state_by_parameter_path(merged_optimizer_state(_numpy_state(optimizer)), model)
    opt_states = [whole]
    if ctx.tp_degree > 1:
        opt_states = []
        dist.all_gather_object(opt_states, whole, group=ctx.tp_group)

    def extra(tmp: str) -> None:
        for rank, opt in enumerate(opt_states[: ctx.tp_degree]):
            paddle.save(opt, os.path.join(tmp, optimizer_file(rank, ctx.tp_degree)))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {
                    **state,
                    "global_step": step,
                    "tensor_parallel_degree": ctx.tp_degree,
                    "sharding_parallel_degree": ctx.sharding_degree,
                },
                f,
                indent=2,
            )

    adapter_of(model).save(model, directory, extra)
    if ctx.is_main and save_total_limit > 0:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def restore_training_checkpoint(model, optimizer, directory: str) -> dict:
    """Load weights, optimizer state (this rank's) and trainer state; returns the trainer state."""
    ctx = model.parallel
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    saved_tp = state.get("tensor_parallel_degree", 1)
    files = [os.path.join(directory, optimizer_file(rank, saved_tp)) for rank in range(saved_tp)]
    if saved_tp == ctx.tp_degree:
        opt = paddle.load(files[ctx.tp_rank], return_numpy=True)
    else:
        opt = _resplit_over_tensor_parallel([paddle.load(f, return_numpy=True) for f in files], directory, model)
    adapter_of(model).load_weights(model, directory)
    opt = optimizer_state_by_tensor_name(opt, model)
    check_optimizer_state_covers(opt, optimizer, files[0])
    # a sharded optimizer (fleet's set_state_dict) keeps the entries of the parameters it owns
    optimizer.set_state_dict({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in opt.items()})
    return state


def _resplit_over_tensor_parallel(parts, directory: str, model) -> dict:
    """This rank's optimizer state at the running TP degree from the files of another degree:
    moments are merged and split like their parameters, beta powers are the same on every rank."""
    ctx = model.parallel
    if not all("/" in k for k in parts[0] if isinstance(parts[0][k], np.ndarray)):
        raise ValueError(
            f"{directory}: written at tensor_parallel_degree {len(parts)} before optimizer files named parameters; "
            "resume at that degree"
        )
    axes = {path: split_axis(param) for path, param in model.named_parameters()}
    out = {}
    for key, value in parts[0].items():
        axis = axes.get(key.rpartition("/")[0]) if isinstance(value, np.ndarray) and "pow_acc" not in key else None
        if axis is None:
            out[key] = value
        else:
            merged = np.concatenate([part[key] for part in parts], axis=axis)
            out[key] = np.split(merged, ctx.tp_degree, axis=axis)[ctx.tp_rank]
    return out
