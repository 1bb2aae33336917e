"""Convert a Hugging Face BLOOM directory into this suite's (PaddleNLP-layout) checkpoint, and back.

    python -m paddlebloom.convert_hf --hf_dir bloom-560m/ --output_dir bloom-560m-paddle/
    python -m paddlebloom.convert_hf --to_hf --model_dir bloom-560m-paddle/ --output_dir bloom-560m-hf/

Reads config.json, model.safetensors (or a sharded model.safetensors.index.json) and the
tokenizer (tokenizer.json, or vocab.json + merges.txt). Safetensors are read directly (header +
raw bytes), bfloat16 included, so neither torch nor a GPU is needed. Linear weights are
transposed ([out, in] → Paddle's [in, out]); the tied lm_head is dropped.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Dict

import numpy as np

from .atomic import atomic_directory
from .checkpoint import TOKENIZER_FILES, copy_tokenizer
from .cli import run_main
from .config import BloomConfig
from .tokenizer import BloomTokenizer
from .weights import WEIGHTS, read_full_weights, read_state_for_rank, save_safetensors, save_weights

_LINEARS = ("query_key_value.weight", "dense.weight", "dense_h_to_4h.weight", "dense_4h_to_h.weight")


def read_hf_weights(hf_dir: str) -> Dict[str, np.ndarray]:
    state = read_full_weights(hf_dir)  # model.safetensors or its sharded index
    if state is not None:
        return state
    if any(f.endswith(".bin") for f in os.listdir(hf_dir)):
        raise FileNotFoundError(
            f"{hf_dir}: only PyTorch .bin weights; save them as safetensors first (transformers: save_pretrained(..., "
            "safe_serialization=True))"
        )
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")


def to_paddle_names(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if name.startswith("lm_head."):
            continue  # tied to the word embeddings
        key = "bloom." + (name[len("transformer.") :] if name.startswith("transformer.") else name)
        value = value.astype(np.float32) if value.dtype in (np.float16, np.float64) else value
        out[key] = np.ascontiguousarray(value.T) if key.endswith(_LINEARS) else value
    return out


def convert(hf_dir: str, output_dir: str) -> dict:
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("model_type", "bloom") != "bloom":
        raise ValueError(f"{config_path}: model_type {raw.get('model_type')!r} is not bloom")
    config = BloomConfig.from_dict(raw)
    state = to_paddle_names(read_hf_weights(hf_dir))
    expected = config.vocab_size, config.hidden_size
    if tuple(state["bloom.word_embeddings.weight"].shape) != expected:
        raise ValueError(
            f"{hf_dir}: word embeddings {state['bloom.word_embeddings.weight'].shape} do not match config {expected}"
        )
    tokenizer = BloomTokenizer.from_pretrained(hf_dir)  # validates BLOOM's special tokens
    with atomic_directory(output_dir) as tmp:
        save_weights(state, os.path.join(tmp, WEIGHTS))
        config.save(tmp)
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_FILES:  # keep the original files where they exist (exact tokenizer.json)
            if os.path.isfile(os.path.join(hf_dir, name)) and name != "tokenizer_config.json":
                shutil.copy2(os.path.join(hf_dir, name), os.path.join(tmp, name))
    return {
        "parameters": int(sum(v.size for v in state.values())),
        "layers": config.n_layer,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
    }


def to_hf(model_dir: str, output_dir: str) -> dict:
    """Our checkpoint (merged, or TP shards) as a Hugging Face BLOOM directory: `transformer.` names,
    Linear weights [out, in], one model.safetensors, config.json for transformers, the tokenizer."""
    config = BloomConfig.load(model_dir)
    state = {}
    for name, value in read_state_for_rank(model_dir).items():
        key = "transformer." + name[len("bloom.") :]
        state[key] = np.ascontiguousarray(value.T) if key.endswith(_LINEARS) else value
    with atomic_directory(output_dir) as tmp:
        save_safetensors(state, os.path.join(tmp, "model.safetensors"))
        raw = config.to_dict()
        raw.pop("dtype", None)
        raw.update(torch_dtype="float32", n_embed=config.hidden_size, num_attention_heads=config.n_head)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=2, sort_keys=True)
        copy_tokenizer(model_dir, tmp)
    return {"parameters": int(sum(v.size for v in state.values())), "output_dir": output_dir}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Convert a Hugging Face BLOOM directory to a paddlebloom checkpoint (or back with --to_hf)."
    )
    p.add_argument("--hf_dir", help="the Hugging Face model directory to read")
    p.add_argument("--to_hf", action="store_true", help="the other way: write --model_dir as a Hugging Face directory")
    p.add_argument("--model_dir", help="with --to_hf: our checkpoint to read")
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    if args.to_hf:
        if not args.model_dir:
            p.error("--to_hf needs --model_dir")
        return run_main("convert_hf", lambda: print(json.dumps(to_hf(args.model_dir, args.output_dir))))
    if not args.hf_dir:
        p.error("--hf_dir is required (or --to_hf --model_dir)")
    return run_main("convert_hf", lambda: print(json.dumps(convert(args.hf_dir, args.output_dir))))


if __name__ == "__main__":
    sys.exit(main())
