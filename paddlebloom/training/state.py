"""Training checkpoints: write atomically, rotate, find the newest, restore exactly.

checkpoint-N/ holds what the run trains (full weights in PaddleNLP's layout, or the LoRA /
prefix adapter), the optimizer state of every tensor-parallel rank (optimizer.pdopt or
optimizer.tpXX.pdopt) and trainer_state.json. Data order, learning rate and dropout seeds are
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

from ..checkpoint import load_into, save_checkpoint
from ..runtime import parallel_context

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
    opt_states = [_numpy_state(optimizer)]
    if ctx.tp_degree > 1:
        opt_states = []
        dist.all_gather_object(opt_states, _numpy_state(optimizer), group=ctx.tp_group)

    def extra(tmp: str) -> None:
        for rank, opt in enumerate(opt_states[: ctx.tp_degree]):
            paddle.save(opt, os.path.join(tmp, optimizer_file(rank, ctx.tp_degree)))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({**state, "global_step": step, "tensor_parallel_degree": ctx.tp_degree}, f, indent=2)

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
    if state.get("tensor_parallel_degree", 1) != ctx.tp_degree:
        raise ValueError(f"{directory}: written at tensor_parallel_degree {state.get('tensor_parallel_degree')}, "
                         f"resuming at {ctx.tp_degree} would lose the optimizer state; resume at the same degree")
    trained.load(directory)
    opt = paddle.load(os.path.join(directory, optimizer_file(ctx.tp_rank, ctx.tp_degree)), return_numpy=True)
    optimizer.set_state_dict({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in opt.items()})
    return state


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
