"""Checkpoint files in PaddleNLP's layout, tensor-parallel split/merge, atomic writes.

A checkpoint directory holds config.json, the tokenizer files, and either one
`model_state.pdparams` (or `model.safetensors`, or an index of either) or one shard per
tensor-parallel rank, `model_state.tp00.pdparams` ... (config.json then says
`tensor_parallel_degree`). Loading adapts to the running degree: a single file is split, shards
of the same degree are read directly, shards of another degree are merged and re-split.
PaddleNLP's 176B BLOOM comes as `auto_dist{rank}.pdparams`, one tensor-parallel shard per rank
with the same parameter names: read (and re-split the same way) when asked for (`autodist`).
"""
import json
import os
import re
import shutil
from typing import Callable, Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from .atomic import atomic_directory, write_file_atomic  # noqa: F401  (re-exported)
from .config import BloomConfig
from .runtime import parallel_context

WEIGHTS = "model_state.pdparams"
SAFE_WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

# Which axis a parameter is split along under tensor parallelism (None: replicated).
_COLUMN = re.compile(r"(query_key_value|dense_h_to_4h)\.(weight|bias)$|(query_key_value|dense_h_to_4h)\.lora_B$")
_ROW = re.compile(r"(self_attention\.dense|dense_4h_to_h|word_embeddings)\.weight$|(self_attention\.dense|dense_4h_to_h)\.lora_A$")


def tp_axis(name: str, ndim: int) -> Optional[int]:
    if _COLUMN.search(name):
        return ndim - 1
    if _ROW.search(name):
        return 0
    return None


def shard_name(rank: int) -> str:
    return f"model_state.tp{rank:02d}.pdparams"


def autodist_name(rank: int) -> str:
    return f"auto_dist{rank}.pdparams"


_AUTODIST = re.compile(r"auto_dist(\d+)\.pdparams")


def split_for_rank(state: Dict[str, np.ndarray], degree: int, rank: int) -> Dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        axis = tp_axis(name, value.ndim)
        out[name] = value if axis is None or degree == 1 else np.split(value, degree, axis=axis)[rank]
    return out


def assign_full_values(named_params, full: Dict[str, np.ndarray]) -> None:
    """Set parameters from full-size arrays, each rank taking its shard: same values at any TP degree."""
    ctx = parallel_context()
    mine = split_for_rank(full, ctx.tp_degree, ctx.tp_rank)
    for name, param in named_params:
        if name in mine:
            param.set_value(mine[name].astype(np.float32))


def merge_shards(shards) -> Dict[str, np.ndarray]:
    merged = {}
    for name, first in shards[0].items():
        axis = tp_axis(name, first.ndim)
        merged[name] = first if axis is None or len(shards) == 1 else np.concatenate([s[name] for s in shards], axis=axis)
    return merged


# ---------------------------------------------------------------- reading

def _to_numpy(state) -> Dict[str, np.ndarray]:
    # dict entries are bookkeeping, not weights (e.g. "StructuredToParameterName@@" in auto_dist files)
    return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in state.items() if not isinstance(v, dict)}


def _read_weight_file(path: str) -> Dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        from .convert_hf import read_safetensors  # bfloat16 included, no torch

        return read_safetensors(path)
    return _to_numpy(paddle.load(path, return_numpy=True))


def read_full_weights(directory: str) -> Optional[Dict[str, np.ndarray]]:
    for name in (WEIGHTS, SAFE_WEIGHTS):
        if os.path.isfile(os.path.join(directory, name)):
            return _read_weight_file(os.path.join(directory, name))
    for index in (WEIGHTS + ".index.json", SAFE_WEIGHTS + ".index.json"):
        path = os.path.join(directory, index)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for part in files:
                state.update(_read_weight_file(os.path.join(directory, part)))
            return state
    return None


def with_model_prefix(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PaddleNLP's BloomModel (not ...ForCausalLM) saves without the `bloom.` prefix."""
    return {(k if k.startswith("bloom.") else "bloom." + k): v for k, v in state.items() if not k.startswith("lm_head.")}


def autodist_files(directory: str) -> list:
    """auto_dist0.pdparams ... auto_dist{n-1}.pdparams, in rank order (every rank present)."""
    ranks = sorted(int(m.group(1)) for f in os.listdir(directory) if (m := _AUTODIST.fullmatch(f)))
    if not ranks:
        raise FileNotFoundError(f"{directory}: no auto_dist{{rank}}.pdparams files (--load_autodist reads PaddleNLP's per-rank 176B layout)")
    missing = sorted(set(range(ranks[-1] + 1)) - set(ranks))
    if missing:
        raise FileNotFoundError(f"{directory}: {autodist_name(missing[0])} is missing (found ranks {ranks})")
    return [os.path.join(directory, autodist_name(r)) for r in ranks]


def _state_from_shards(paths, degree: int, rank: int) -> Dict[str, np.ndarray]:
    """This rank's parameters from one file per tensor-parallel rank, of any degree."""
    if len(paths) == degree:
        return with_model_prefix(_read_weight_file(paths[rank]))
    merged = merge_shards([with_model_prefix(_read_weight_file(p)) for p in paths])
    return split_for_rank(merged, degree, rank)


def read_state_for_rank(directory: str, degree: int = 1, rank: int = 0, autodist: bool = False) -> Dict[str, np.ndarray]:
    """The parameters this rank holds at `degree`, from any layout on disk (`autodist`: from the
    auto_dist{rank}.pdparams files only)."""
    if autodist:
        return _state_from_shards(autodist_files(directory), degree, rank)
    full = read_full_weights(directory)
    if full is not None:
        return split_for_rank(with_model_prefix(full), degree, rank)
    shards = sorted(f for f in os.listdir(directory) if re.fullmatch(r"model_state\.tp\d\d\.pdparams", f))
    if not shards:
        hint = " (auto_dist{rank}.pdparams files are read with --load_autodist)" if any(_AUTODIST.fullmatch(f) for f in os.listdir(directory)) else ""
        raise FileNotFoundError(f"{directory}: no weights ({WEIGHTS}, {SAFE_WEIGHTS} or tensor-parallel shards){hint}")
    return _state_from_shards([os.path.join(directory, s) for s in shards], degree, rank)


def load_into(model: paddle.nn.Layer, directory: str, strict: bool = True, autodist: bool = False) -> None:
    ctx = parallel_context()
    state = read_state_for_rank(directory, ctx.tp_degree, ctx.tp_rank, autodist)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if strict and missing:
        raise KeyError(f"{directory}: checkpoint lacks {len(missing)} parameters, e.g. {missing[0]}")
    for name, param in own.items():
        if name in state:
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{directory}: {name} has shape {list(value.shape)}, the model expects {list(param.shape)}")
            param.set_value(value.astype(param.numpy().dtype if param.dtype != paddle.bfloat16 else np.float32))


# ---------------------------------------------------------------- writing

def copy_tokenizer(src_dir: str, dst_dir: str) -> None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def gather_full_state(state: Dict[str, paddle.Tensor]) -> Optional[Dict[str, np.ndarray]]:
    """Merge the tensor-parallel shards of `state` (collective: every TP rank must call it).

    Returns the full state on TP rank 0, None elsewhere.
    """
    ctx = parallel_context()
    out = {}
    for name, tensor in state.items():
        axis = tp_axis(name, len(tensor.shape))
        if ctx.tp_degree > 1 and axis is not None:
            parts = []
            dist.all_gather(parts, tensor.detach(), group=ctx.tp_group)
            value = np.concatenate([p.numpy() for p in parts[: ctx.tp_degree]], axis=axis)
        else:
            value = tensor.detach().numpy()
        out[name] = value
    return out if ctx.tp_rank == 0 else None


def save_weights(state: Dict[str, np.ndarray], path: str) -> None:
    write_file_atomic(path, lambda tmp: paddle.save({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp))


def save_checkpoint(model, directory: str, config: BloomConfig, tokenizer_dir: Optional[str] = None, merge: bool = True, extra: Optional[Callable[[str], None]] = None) -> None:
    """Write the model to `directory` atomically (collective under TP).

    merge=True writes one ordinary checkpoint; merge=False one shard per TP rank.
    `extra(tmp_dir)` may add files (optimizer state, adapter configs) before the rename.
    """
    ctx = parallel_context()
    state = {k: v for k, v in model.state_dict().items()}
    if merge or ctx.tp_degree == 1:
        full = gather_full_state(state)
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
