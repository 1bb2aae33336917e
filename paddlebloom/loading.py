"""One way every script turns `--model_name_or_path [--lora_path] [--prefix_path]` into a model.

A local directory is read as it is. Any other name (e.g. `bigscience/bloom-560m`) is fetched
through PaddleNLP's downloader into its cache first; machines without a hub get a one-line error.
"""

import os
from typing import Optional, Tuple

import paddle

from .adapter import adapter_of
from .checkpoint import load_into
from .config import BloomConfig
from .lora.model import LoRA
from .model import BloomForCausalLM
from .prefix.model import Prefix
from .runtime import parallel_context
from .tokenizer import BloomTokenizer

HUB_FILES = (
    "config.json",
    "model_state.pdparams",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
)


def resolve_model_dir(name_or_path: str) -> str:
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name_or_path}: model directory not found")
    try:
        # optional: paddlenlp - its hub downloader, needed only for names that are not local directories (import ~10 s)
        from paddlenlp.utils.download import resolve_file_path

        found = [resolve_file_path(name_or_path, [f]) for f in HUB_FILES]
    except Exception as e:  # the downloader raises many types; all mean "not available here"
        raise FileNotFoundError(
            f"{name_or_path}: not a local directory, and downloading it failed ({type(e).__name__}: {e})"
        ) from None
    if not found[0]:
        raise FileNotFoundError(f"{name_or_path}: not a local directory, and no hub has it")
    return os.path.dirname(found[0])


DTYPES = ("float32", "float16", "bfloat16")


def require_dtype_kernels(dtype: str) -> None:
    """A one-line error where the device cannot compute in `dtype` (Paddle's CPU build has no
    float16/bfloat16 matmul), before anything is loaded."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    try:
        x = paddle.ones([2, 2], dtype=dtype)
        paddle.matmul(x, x)
    except (NotImplementedError, RuntimeError, ValueError) as e:  # Paddle's NotFound kernel error is a RuntimeError
        raise ValueError(
            f"--dtype {dtype}: this device ({paddle.get_device()}) has no {dtype} matmul kernel "
            f"({type(e).__name__}); use --dtype float32 here, or a GPU"
        ) from None


def load_tokenizer(name_or_path: str) -> BloomTokenizer:
    return BloomTokenizer.from_pretrained(resolve_model_dir(name_or_path))


def load_model(
    name_or_path: str,
    lora_path: Optional[str] = None,
    prefix_path: Optional[str] = None,
    merge_lora: bool = True,
    dtype: str = "float32",
    autodist: bool = False,
) -> Tuple[BloomForCausalLM, BloomTokenizer, BloomConfig]:
    """The model for the running tensor-parallel degree, adapters applied, in eval mode.

    With `merge_lora` the LoRA weights are folded into the base weights (W + A B * alpha / r), so
    the result is an ordinary BloomForCausalLM. A prefix adapter wraps the model: calls then take
    the same arguments and the prefix is prepended to the cache and the attention mask.
    `adapter_of(model)` says which adapter the result carries (prefix, unmerged LoRA, or none).
    `dtype` float16/bfloat16 holds the weights in that type (where the device can compute in it);
    `autodist` reads PaddleNLP's auto_dist{rank}.pdparams shards.
    """
    if dtype != "float32":
        require_dtype_kernels(dtype)
    directory = resolve_model_dir(name_or_path)
    config = BloomConfig.load(directory)
    parallel = parallel_context()
    config.validate_tensor_parallel(parallel.tp_degree)
    model = BloomForCausalLM(config, parallel=parallel)
    load_into(model, directory, autodist=autodist)
    if lora_path:
        model = LoRA.from_directory(lora_path).load(model, lora_path)
        if merge_lora:
            model, _ = adapter_of(model).merge(model)
    if prefix_path:
        model = Prefix.from_directory(prefix_path).load(model, prefix_path)
    if dtype != "float32":
        model.to(dtype=dtype)
    model.eval()
    return model, BloomTokenizer.from_pretrained(directory), config
