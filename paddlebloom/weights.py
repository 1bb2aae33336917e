"""Weight files: reading and writing state dicts (name → numpy array) in every layout we meet.

A checkpoint directory holds either one `model_state.pdparams` (or `model.safetensors`, or an index
of either) or one shard per tensor-parallel rank, `model_state.tp00.pdparams` ... Reading adapts to
the degree asked for: a single file is split, shards of the same degree are read directly, shards
of another degree are merged and re-split. PaddleNLP's 176B BLOOM comes as `auto_dist{rank}.pdparams`,
one tensor-parallel shard per rank with the same parameter names: read (and re-split the same way)
when asked for (`autodist`). Safetensors are read directly (header + raw bytes), bfloat16 included,
so neither torch nor a GPU is needed.

Nothing here knows a model or the running process group (checkpoint.py loads and saves models);
both checkpoint.py and convert_hf.py read and write weights through this module.
"""

import json
import os
import re
import struct
from typing import Dict, Optional

import numpy as np
import paddle
from safetensors.numpy import save_file

from .atomic import write_file_atomic

WEIGHTS = "model_state.pdparams"
SAFE_WEIGHTS = "model.safetensors"

# Which axis a BLOOM checkpoint's parameter is split along under tensor parallelism (None:
# replicated), by name, for files. Live parameters carry their axis (parallel.layers.split_axis).
_COLUMN = re.compile(r"(query_key_value|dense_h_to_4h)\.(weight|bias)$")
_ROW = re.compile(r"(self_attention\.dense|dense_4h_to_h|word_embeddings)\.weight$")
_AUTODIST = re.compile(r"auto_dist(\d+)\.pdparams")
_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


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


def split_for_rank(state: Dict[str, np.ndarray], degree: int, rank: int) -> Dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        axis = tp_axis(name, value.ndim)
        out[name] = value if axis is None or degree == 1 else np.split(value, degree, axis=axis)[rank]
    return out


def merge_shards(shards) -> Dict[str, np.ndarray]:
    merged = {}
    for name, first in shards[0].items():
        axis = tp_axis(name, first.ndim)
        merged[name] = (
            first if axis is None or len(shards) == 1 else np.concatenate([s[name] for s in shards], axis=axis)
        )
    return merged


# ---------------------------------------------------------------- one file


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32/int numpy arrays (bfloat16 widened)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = array.reshape(info["shape"])
    return out


def save_safetensors(state: Dict[str, np.ndarray], path: str) -> None:
    """One .safetensors file, written atomically (`format: pt` metadata, as transformers writes it)."""
    write_file_atomic(
        path,
        lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp, metadata={"format": "pt"}),
    )


def _to_numpy(state) -> Dict[str, np.ndarray]:
    # dict entries are bookkeeping, not weights (e.g. "StructuredToParameterName@@" in auto_dist files)
    return {
        k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in state.items() if not isinstance(v, dict)
    }


def read_weight_file(path: str) -> Dict[str, np.ndarray]:
    """One .pdparams or .safetensors file."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return _to_numpy(paddle.load(path, return_numpy=True))


def save_weights(state: Dict[str, np.ndarray], path: str) -> None:
    """One .pdparams file, written atomically."""
    write_file_atomic(path, lambda tmp: paddle.save({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp))


# ---------------------------------------------------------------- a directory


def read_full_weights(directory: str) -> Optional[Dict[str, np.ndarray]]:
    """The unsharded weights of `directory` (one file or an index of parts), or None if it has none."""
    for name in (WEIGHTS, SAFE_WEIGHTS):
        if os.path.isfile(os.path.join(directory, name)):
            return read_weight_file(os.path.join(directory, name))
    for index in (WEIGHTS + ".index.json", SAFE_WEIGHTS + ".index.json"):
        path = os.path.join(directory, index)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for part in files:
                state.update(read_weight_file(os.path.join(directory, part)))
            return state
    return None


def with_model_prefix(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PaddleNLP's BloomModel (not ...ForCausalLM) saves without the `bloom.` prefix."""
    return {
        (k if k.startswith("bloom.") else "bloom." + k): v for k, v in state.items() if not k.startswith("lm_head.")
    }


def autodist_files(directory: str) -> list:
    """auto_dist0.pdparams ... auto_dist{n-1}.pdparams, in rank order (every rank present)."""
    ranks = sorted(int(m.group(1)) for f in os.listdir(directory) if (m := _AUTODIST.fullmatch(f)))
    if not ranks:
        raise FileNotFoundError(
            f"{directory}: no auto_dist{{rank}}.pdparams files (--load_autodist reads PaddleNLP's per-rank 176B layout)"
        )
    missing = sorted(set(range(ranks[-1] + 1)) - set(ranks))
    if missing:
        raise FileNotFoundError(f"{directory}: {autodist_name(missing[0])} is missing (found ranks {ranks})")
    return [os.path.join(directory, autodist_name(r)) for r in ranks]


def _state_from_shards(paths, degree: int, rank: int) -> Dict[str, np.ndarray]:
    """This rank's parameters from one file per tensor-parallel rank, of any degree."""
    if len(paths) == degree:
        return with_model_prefix(read_weight_file(paths[rank]))
    merged = merge_shards([with_model_prefix(read_weight_file(p)) for p in paths])
    return split_for_rank(merged, degree, rank)


def read_state_for_rank(
    directory: str, degree: int = 1, rank: int = 0, autodist: bool = False
) -> Dict[str, np.ndarray]:
    """The parameters this rank holds at `degree`, from any layout on disk (`autodist`: from the
    auto_dist{rank}.pdparams files only)."""
    if autodist:
        return _state_from_shards(autodist_files(directory), degree, rank)
    full = read_full_weights(directory)
    if full is not None:
        return split_for_rank(with_model_prefix(full), degree, rank)
    shards = sorted(f for f in os.listdir(directory) if re.fullmatch(r"model_state\.tp\d\d\.pdparams", f))
    if not shards:
        hint = (
            " (auto_dist{rank}.pdparams files are read with --load_autodist)"
            if any(_AUTODIST.fullmatch(f) for f in os.listdir(directory))
            else ""
        )
        raise FileNotFoundError(f"{directory}: no weights ({WEIGHTS}, {SAFE_WEIGHTS} or tensor-parallel shards){hint}")
    return _state_from_shards([os.path.join(directory, s) for s in shards], degree, rank)
