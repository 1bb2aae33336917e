"""Apply, save, load and merge LoRA adapters on our BloomForCausalLM.

An adapter directory holds lora_config.json + lora_model_state.pdparams (PaddleNLP's names);
under tensor parallelism the saved weights are merged to full size, and split again on load.
"""
import os
from contextlib import contextmanager
from typing import Dict

import numpy as np
import paddle

from ..adapter_files import load_config, read_weights, save_config
from ..checkpoint import assign_full_values, atomic_directory, gather_full_state, save_weights, split_for_rank, tp_axis
from ..runtime import parallel_context
from .config import LORA_CONFIG, LORA_WEIGHTS, LoRAConfig
from .layer import LoRALinear


def apply_lora(model: paddle.nn.Layer, config: LoRAConfig, seed: int = 0) -> paddle.nn.Layer:
    """Wrap every matching linear layer and freeze everything except the LoRA weights.

    A is drawn Kaiming-uniform (as peft) at full size from a seeded NumPy generator and then
    split, so a run starts from the same adapter at every tensor-parallel degree; B starts at 0.
    """
    targets = [(name, layer) for name, layer in model.named_sublayers() if name.split(".")[-1] in ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h") and config.matches(name)]
    if not targets:
        raise ValueError(f"--lora_target_modules {config.target_modules} matches no layer of the model")
    for name, layer in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model if not parent_name else dict(model.named_sublayers())[parent_name]
        setattr(parent, attr, LoRALinear(layer, config.r, config.lora_alpha, config.lora_dropout))
    rng = np.random.RandomState(seed)
    full = {}
    for name, param in sorted(lora_state(model).items()):
        if name.endswith("lora_A"):
            base_in = dict(model.named_parameters())[name[: -len("lora_A")] + "weight"]
            fan_in = base_in.shape[0] * (parallel_context().tp_degree if tp_axis(name, 2) == 0 else 1)
            bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
            full[name] = rng.uniform(-bound, bound, size=(fan_in, config.r))
    assign_full_values(model.named_parameters(), full)
    for name, param in model.named_parameters():
        param.stop_gradient = not (name.endswith("lora_A") or name.endswith("lora_B"))
    model.lora_config = config
    return model


def lora_state(model: paddle.nn.Layer) -> Dict[str, paddle.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}


def save_lora(model: paddle.nn.Layer, directory: str, extra=None) -> None:
    """Write the adapter (collective under TP: shards are gathered into full-size weights)."""
    full = gather_full_state(lora_state(model))
    if parallel_context().is_main:
        with atomic_directory(directory) as tmp:
            save_weights(full, os.path.join(tmp, LORA_WEIGHTS))
            config = LoRAConfig(**{**model.lora_config.__dict__, "tensor_parallel_degree": 1})
            save_config(config, os.path.join(tmp, LORA_CONFIG))
            if extra is not None:
                extra(tmp)
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.barrier()


def set_lora_weights(model: paddle.nn.Layer, directory: str) -> None:
    ctx = parallel_context()
    state = split_for_rank(read_weights(os.path.join(directory, LORA_WEIGHTS)), ctx.tp_degree, ctx.tp_rank)
    own = lora_state(model)
    if set(state) != set(own):
        missing = sorted(set(own) ^ set(state))[0]
        raise ValueError(f"{directory}: adapter does not fit the model (e.g. {missing}); check --lora_target_modules")
    for name, param in own.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(f"{directory}: {name} has shape {list(state[name].shape)}, expected {list(param.shape)}")
        param.set_value(state[name].astype(np.float32))


def load_lora(model: paddle.nn.Layer, directory: str, merge: bool = True) -> paddle.nn.Layer:
    config = load_config(LoRAConfig, os.path.join(directory, LORA_CONFIG))
    apply_lora(model, config)
    set_lora_weights(model, directory)
    if merge:
        merge_lora(model)
    return model


def merge_lora(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """Fold every LoRA branch into its base weight, then unwrap: an ordinary model again."""
    wrapped = [(name, layer) for name, layer in model.named_sublayers() if isinstance(layer, LoRALinear)]
    layers = dict(model.named_sublayers())
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(layers[parent_name] if parent_name else model, attr, layer.base[0])
    for param in model.parameters():
        param.stop_gradient = False
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


@contextmanager
def adapters_disabled(model: paddle.nn.Layer):
    """Run the base model inside the block: every LoRA branch is skipped, nothing is copied.

    DPO with LoRA uses this as its reference model (as peft's `disable_adapter()` does for TRL).
    """
    layers = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear)]
    if not layers:
        raise ValueError("the model has no LoRA adapter to disable")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
