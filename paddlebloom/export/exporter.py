"""Load a checkpoint (+ LoRA folded in, + prefix baked in), trace the decode loop, write a deployable directory.

The output directory holds only what deployment reads:
  NAME.json + NAME.pdiparams    the program (Paddle 3 PIR; legacy Paddle writes NAME.pdmodel)
  tokenizer files               so prompts are encoded exactly as in training
  generation_config.json        eos/pad/bos ids and default sampling settings
  export_info.json              what was exported from what (source, adapters, dtype, input names)
It is written to a temporary sibling and renamed, so a failed export leaves no half-written model;
the directory is one model's (its tokenizer and generation config are per directory).
"""
import json
import os
from typing import Optional

import paddle
from paddle.static import InputSpec

from ..checkpoint import atomic_directory, copy_tokenizer
from ..loading import load_model, resolve_model_dir
from ..deploy.predictor import find_model
from .program import INPUTS, GenerationProgram

DTYPES = ("float32", "bfloat16")
GENERATION_DEFAULTS = {"decode_strategy": "greedy_search", "max_new_tokens": 64, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0}


def stacked_prefix(prefix_model) -> paddle.Tensor:
    """The prefix adapter's keys and values for batch 1 as one tensor [2 * n_layer, 1, heads, n_prefix, head_dim]."""
    with paddle.no_grad():
        kv = prefix_model.prefix_past_key_values(1)
    return paddle.stack([k for k, _ in kv] + [v for _, v in kv]).detach()


def build_program(model) -> GenerationProgram:
    if hasattr(model, "prefix_past_key_values"):
        model.eval()  # no prefix dropout in what we bake in
        program = GenerationProgram(model.model, stacked_prefix(model))
    else:
        program = GenerationProgram(model)
    program.eval()
    return program


def export_generation(model_name_or_path: str, output_path: str, lora_path: Optional[str] = None, prefix_path: Optional[str] = None, dtype: str = "float32") -> str:
    """Write the generation program to `output_path` (DIR/NAME); returns the path of the program file."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    directory, name = os.path.split(os.path.abspath(output_path))
    if not name:
        raise ValueError(f"--output_path {output_path}: give DIR/NAME, e.g. inference/bloom")
    source = resolve_model_dir(model_name_or_path)
    model, tokenizer, config = load_model(source, lora_path=lora_path, prefix_path=prefix_path, merge_lora=True)
    program = build_program(model)
    if dtype != "float32":
        program.to(dtype=dtype)
    spec = [InputSpec(shape, dt, name=n) for n, shape, dt in INPUTS]
    static = paddle.jit.to_static(program, input_spec=spec, full_graph=True)
    with atomic_directory(directory) as tmp:
        paddle.jit.save(static, os.path.join(tmp, name))
        find_model(tmp, name)  # fail here, before the rename, if Paddle wrote something unexpected
        copy_tokenizer(source, tmp)
        generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **GENERATION_DEFAULTS}
        _write_json(os.path.join(tmp, "generation_config.json"), generation)
        info = {
            "model_prefix": name,
            "source": source,
            "lora_path": lora_path,
            "prefix_path": prefix_path,
            "dtype": dtype,
            "vocab_size": config.vocab_size,
            "inputs": [n for n, _, _ in INPUTS],
            "paddle_version": paddle.__version__,
        }
        _write_json(os.path.join(tmp, "export_info.json"), info)
    return find_model(directory, name)[0]


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
