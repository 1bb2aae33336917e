"""Load a checkpoint (+ LoRA folded in, + prefix), trace the step model, write a deployable directory.

The output directory holds only what deployment reads:
  NAME.json + NAME.pdiparams    the step program (Paddle 3 PIR; legacy Paddle writes NAME.pdmodel):
                                new tokens + KV cache in, logits of the picked positions out (engine/step_model.py)
  prefix_kv.npy                 a prefix adapter's keys/values, copied into each request's cache slot
  tokenizer files               so prompts are encoded exactly as in training
  generation_config.json        eos/pad/bos ids and default generation settings
  export_info.json              what was exported from what (source, adapters, weights, shapes, inputs)
It is written to a temporary sibling and renamed, so a failed export leaves no half-written model;
the directory is one model's (its tokenizer and generation config are per directory).
"""

import json
import os
from typing import Optional

import numpy as np
import paddle
from paddle.static import InputSpec

from ..adapter import adapter_of
from ..atomic import atomic_directory, check_replaceable
from ..checkpoint import copy_tokenizer
from ..engine.backends import STEP_INPUTS, step_inputs
from ..engine.settings import EXPORTED_FIELDS, GenerationConfig
from ..engine.step_model import StepModel
from ..loading import load_model, resolve_model_dir
from ..ops import OpsUnavailable
from ..ops import load as load_ops
from ..workarounds import find_model

DTYPES = ("float32", "bfloat16")
QUANT_TYPES = ("weight_only_int8",)
PREFIX_KV = "prefix_kv.npy"
GENERATION_DEFAULTS = {name: getattr(GenerationConfig, name) for name in EXPORTED_FIELDS}  # deploy/serving's defaults


def weight_kind(dtype: str, quant_type: Optional[str]) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    if quant_type and quant_type not in QUANT_TYPES:
        raise ValueError(f"--quant_type {quant_type}: choose from {', '.join(QUANT_TYPES)}")
    if quant_type and dtype != "float32":
        raise ValueError(f"--quant_type {quant_type} stores int8 weights with float32 scales: leave --dtype at float32")
    return quant_type or dtype


def step_input_spec(config, local_heads: int):
    return [
        InputSpec(shape, dtype, name=name)
        for name, shape, dtype in step_inputs(config.n_layer, local_heads, config.head_dim)
    ]


def export_generation(
    model_name_or_path: str,
    output_path: str,
    lora_path: Optional[str] = None,
    prefix_path: Optional[str] = None,
    dtype: str = "float32",
    quant_type: Optional[str] = None,
) -> str:
    """Write the step program to `output_path` (DIR/NAME); returns the path of the program file."""
    kind = weight_kind(dtype, quant_type)
    directory, name = os.path.split(os.path.abspath(output_path))
    if not name:
        raise ValueError(f"--output_path {output_path}: give DIR/NAME, e.g. inference/bloom")
    check_replaceable(directory)  # DIR becomes the export: never someone's project folder
    try:
        load_ops()  # the program's kernels are ours: fail before loading a large model if they cannot be built
    except OpsUnavailable as e:
        raise ValueError(f"cannot export: {e}") from None
    source = resolve_model_dir(model_name_or_path)
    model, tokenizer, config = load_model(source, lora_path=lora_path, prefix_path=prefix_path, merge_lora=True)
    model, prefix_kv = adapter_of(model).step_parts(model)  # the plain model; a prefix's keys/values
    step = StepModel(model, kind)
    static = paddle.jit.to_static(step, input_spec=step_input_spec(config, step.local_heads), full_graph=True)
    with atomic_directory(directory) as tmp:
        paddle.jit.save(static, os.path.join(tmp, name))
        find_model(tmp, name)  # fail here, before the rename, if Paddle wrote something unexpected
        copy_tokenizer(source, tmp)
        if prefix_kv is not None:
            np.save(os.path.join(tmp, PREFIX_KV), prefix_kv.astype(np.float32))
        generation = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **GENERATION_DEFAULTS,
        }
        _write_json(os.path.join(tmp, "generation_config.json"), generation)
        info = {
            "model_prefix": name,
            "program": "step",
            "source": source,
            "lora_path": lora_path,
            "prefix_path": prefix_path,
            "weights": kind,
            "dtype": dtype,
            "quant_type": quant_type,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "n_prefix": 0 if prefix_kv is None else int(prefix_kv.shape[2]),
            "inputs": list(STEP_INPUTS),
            "paddle_version": paddle.__version__,
        }
        _write_json(os.path.join(tmp, "export_info.json"), info)
    return find_model(directory, name)[0]


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
