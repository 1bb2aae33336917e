"""Training checkpoints: write atomically, rotate, find the newest, restore exactly.

checkpoint-N/ holds what the run trains (full weights in PaddleNLP's layout, or the LoRA /
prefix adapter), the optimizer state of every tensor-parallel rank (optimizer.pdopt or
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

from ..checkpoint import load_into, merge_shards, save_checkpoint, split_for_rank
from ..runtime import parallel_context
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


def save_training_checkpoint(trained, optimizer, output_dir: str, step: int, state: dict, save_total_limit: int) -> str:
    """Collective under tensor parallelism; returns the checkpoint directory."""
    ctx = parallel_context()
    directory = os.path.join(output_dir, f"checkpoint-{step}")
    whole = _by_parameter_path(merged_optimizer_state(_numpy_state(optimizer)), trained.model)  # collective over the sharding group
    opt_states = [whole]
    if ctx.tp_degree > 1:
        opt_states = []
        dist.all_gather_object(opt_states, whole, group=ctx.tp_group)

    def extra(tmp: str) -> None:
        for rank, opt in enumerate(opt_states[: ctx.tp_degree]):
            paddle.save(opt, os.path.join(tmp, optimizer_file(rank, ctx.tp_degree)))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({**state, "global_step": step, "tensor_parallel_degree": ctx.tp_degree, "sharding_parallel_degree": ctx.sharding_degree}, f, indent=2)

    trained.save(directory, extra)
    if ctx.is_main and save_total_limit > 0:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def restore_training_checkpoint(trained, optimizer, directory: str) -> dict:
    """Load weights, optimizer state (this rank's) and trainer state; returns the trainer state."""
    ctx = parallel_context()
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    saved_tp = state.get("tensor_parallel_degree", 1)
    files = [os.path.join(directory, optimizer_file(rank, saved_tp)) for rank in range(saved_tp)]
    if saved_tp == ctx.tp_degree:
        opt = paddle.load(files[ctx.tp_rank], return_numpy=True)
    else:
        opt = _resplit_over_tensor_parallel([paddle.load(f, return_numpy=True) for f in files], directory)
    trained.load(directory)
    opt = _by_tensor_name(opt, trained.model)
    _check_covers_parameters(opt, optimizer, files[0])
    # a sharded optimizer (fleet's set_state_dict) keeps the entries of the parameters it owns
    optimizer.set_state_dict({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in opt.items()})
    return state


# Paddle keys optimizer state by generated tensor names (linear_7.w_0_moment1_0) that count the
# layers a process built before: a process that built another model first (a test, a reference
# model) would not find its state. Files key it by parameter path instead
# (bloom.h.0.mlp.dense_4h_to_h.weight/moment1_0); files written before that load as they are.

def _by_parameter_path(opt: dict, model) -> dict:
    paths = {p.name: path for path, p in model.named_parameters()}
    by_length = sorted(paths, key=len, reverse=True)
    out = {}
    for key, value in opt.items():
        tensor = next((n for n in by_length if key.startswith(n + "_")), None)
        out[key if tensor is None else f"{paths[tensor]}/{key[len(tensor) + 1:]}"] = value
    return out


def _by_tensor_name(opt: dict, model) -> dict:
    names = {path: p.name for path, p in model.named_parameters()}
    out = {}
    for key, value in opt.items():
        path, _, accumulator = key.rpartition("/")
        out[f"{names[path]}_{accumulator}" if path in names else key] = value
    return out


def _resplit_over_tensor_parallel(parts, directory: str) -> dict:
    """This rank's optimizer state at the running TP degree from the files of another degree:
    moments are merged and split like their parameters, beta powers are the same on every rank."""
    ctx = parallel_context()
    if not all("/" in k for k in parts[0] if isinstance(parts[0][k], np.ndarray)):
        raise ValueError(f"{directory}: written at tensor_parallel_degree {len(parts)} before optimizer files named parameters; resume at that degree")
    out = {k: v for k, v in parts[0].items() if not isinstance(v, np.ndarray) or "pow_acc" in k}
    for accumulator in sorted({k.rpartition("/")[2] for k in parts[0] if k not in out}):
        shards = [{k.rpartition("/")[0]: v for k, v in part.items() if k.endswith("/" + accumulator)} for part in parts]
        mine = split_for_rank(merge_shards(shards), ctx.tp_degree, ctx.tp_rank)
        out.update({f"{path}/{accumulator}": v for path, v in mine.items()})
    return out


def _check_covers_parameters(opt: dict, optimizer, path: str) -> None:
    """Paddle's set_state_dict silently ignores entries that match no parameter (a fresh Adam
    state would resume without a word): refuse a file that lacks a trained parameter's state."""
    if not any(isinstance(v, np.ndarray) for v in opt.values()):
        return  # written before the first optimizer step
    for p in optimizer._parameter_list:
        if not any(k.startswith(p.name + "_") for k in opt):
            raise ValueError(f"{path}: no optimizer state for parameter {p.name} {list(p.shape)}: the checkpoint was written for other trained parameters")


class TrainedPart:
    """What a run trains and therefore saves: the whole model, a LoRA adapter, or a prefix."""

    def __init__(self, kind: str, model, config, tokenizer_dir: str, merge: bool = True):
        self.kind, self.model, self.config, self.tokenizer_dir, self.merge = kind, model, config, tokenizer_dir, merge

    def save(self, directory: str, extra=None) -> None:
        if self.kind == "lora":
            from ..lora.model import save_lora

            save_lora(self.model, directory, extra)
        elif self.kind == "prefix":
            from ..prefix.model import save_prefix

            save_prefix(self.model, directory, extra)
        else:
            save_checkpoint(self.model, directory, self.config, self.tokenizer_dir, merge=self.merge, extra=extra)

    def load(self, directory: str) -> None:
        if self.kind == "lora":
            from ..lora.model import set_lora_weights

            set_lora_weights(self.model, directory)
        elif self.kind == "prefix":
            from ..prefix.model import set_prefix_weights

            set_prefix_weights(self.model, directory)
        else:
            load_into(self.model, directory)
