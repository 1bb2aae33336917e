"""The adapter interface: what a run trains on top of BLOOM, and how it is saved, loaded, merged, exported.

peft's BaseTuner idea, small. Every way of tuning is an Adapter: `lora.model.LoRA`,
`prefix.model.Prefix` and `FullTuning`, the null adapter (every weight trained, nothing added).
The trainer, loading, prediction, merging, export and DPO call this interface and never ask
which kind they hold:

  apply(model, seed) -> model        attach to a BloomForCausalLM; the result is what callers call
  trainable_state(model)             the parameters it trains (and saves), by name
  save(model, directory, extra)      write its directory atomically (collective under TP)
  load_weights(model, directory)     set an applied adapter's weights from its directory
  merge(model) -> (model, alongside) a plain BloomForCausalLM with the adapter folded in, and a
                                     writer for what cannot be folded in (saved beside the weights)
  step_parts(model)                  export hook: (the plain model a step program runs, keys/values
                                     every request's cache starts with, or None)
  disabled(model)                    a block in which the model runs without the adapter

`apply` attaches the adapter to the model it returns, so code handed a model finds its adapter
with `adapter_of(model)` (a model nobody adapted has the null adapter).
An adapter directory holds PaddleNLP's files: a JSON config and full-size weights.
"""

import json
import os
from dataclasses import asdict, fields, replace
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.distributed as dist

from .atomic import atomic_directory
from .checkpoint import load_into, save_checkpoint
from .weights import read_weight_file, save_weights

Writer = Optional[Callable[[str], None]]


class Adapter:
    name = "full"
    # True when the model under the adapter stays frozen: `disabled` then runs that base model
    # (DPO's reference model, with no second copy of the weights).
    frozen_base = False

    def apply(self, model: paddle.nn.Layer, seed: int = 0) -> paddle.nn.Layer:
        raise NotImplementedError

    def trainable_state(self, model) -> Dict[str, paddle.Tensor]:
        raise NotImplementedError

    def save(self, model, directory: str, extra: Writer = None) -> None:
        raise NotImplementedError

    def load_weights(self, model, directory: str) -> None:
        raise NotImplementedError

    def merge(self, model) -> Tuple[paddle.nn.Layer, Writer]:
        raise NotImplementedError

    def step_parts(self, model) -> Tuple[paddle.nn.Layer, Optional[np.ndarray]]:
        return model, None

    def disabled(self, model):
        """A context manager in which `model` runs without the adapter."""
        raise ValueError(f"the model has no adapter to disable ({self.name} tuning trains the model itself)")

    def save_merged(self, model, directory: str, tokenizer_dir: Optional[str] = None) -> None:
        """One ordinary checkpoint with the adapter folded in (collective under TP); what cannot
        be folded in (a prefix) is written beside the weights."""
        base, alongside = self.merge(model)
        save_checkpoint(base, directory, base.config, tokenizer_dir, merge=True, extra=alongside)


class FullTuning(Adapter):
    """The null adapter: all weights are trained, and its directory is an ordinary checkpoint
    (with the tokenizer of `tokenizer_dir`; `shards`: one weight file per tensor-parallel rank)."""

    def __init__(self, tokenizer_dir: Optional[str] = None, shards: bool = False):
        self.tokenizer_dir, self.shards = tokenizer_dir, shards

    def apply(self, model, seed: int = 0):
        return attach(model, self)

    def trainable_state(self, model):
        return dict(model.state_dict())

    def save(self, model, directory: str, extra: Writer = None) -> None:
        save_checkpoint(model, directory, model.config, self.tokenizer_dir, merge=not self.shards, extra=extra)

    def load_weights(self, model, directory: str) -> None:
        load_into(model, directory)

    def merge(self, model):
        return model, None


class FileAdapter(Adapter):
    """An adapter whose directory is `config_file` (its config dataclass) + `weights_file`."""

    config_class, config_file, weights_file = None, "", ""
    frozen_base = True

    def __init__(self, config):
        self.config = config

    @classmethod
    def from_directory(cls, directory: str) -> "FileAdapter":
        return cls(load_config(cls.config_class, os.path.join(directory, cls.config_file)))

    def load(self, model, directory: str):
        """Apply the adapter stored in `directory` to `model` (seeded values are overwritten)."""
        model = self.apply(model)
        self.load_weights(model, directory)
        return model

    def full_weights(self, model) -> Optional[Dict[str, np.ndarray]]:
        """The trained weights at full size (collective under TP); may be None off the main rank."""
        raise NotImplementedError

    def read_weights(self, directory: str) -> Dict[str, np.ndarray]:
        path = os.path.join(directory, self.weights_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: adapter weights not found")
        return read_weight_file(path)

    def writer(self, weights: Dict[str, np.ndarray]) -> Callable[[str], None]:
        """Writes the adapter's files into a directory (written as for tensor_parallel_degree 1:
        the weights are full size)."""

        def write(directory: str) -> None:
            save_weights(weights, os.path.join(directory, self.weights_file))
            save_config(replace(self.config, tensor_parallel_degree=1), os.path.join(directory, self.config_file))

        return write

    def save(self, model, directory: str, extra: Writer = None) -> None:
        weights = self.full_weights(model)
        if model.parallel.is_main:
            with atomic_directory(directory) as tmp:
                self.writer(weights)(tmp)
                if extra is not None:
                    extra(tmp)
        if dist.get_world_size() > 1:
            dist.barrier()  # nobody reads the directory before it is complete


def attach(model, adapter: Adapter):
    """Record on `model` the adapter that made it (returns the model)."""
    model.adapter = adapter
    return model


def adapter_of(model) -> Adapter:
    """The adapter applied to `model`; the null adapter for a model nobody adapted."""
    return getattr(model, "adapter", None) or FullTuning()


def save_config(config, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(asdict(config), f, indent=2, sort_keys=True)


def load_config(cls, path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.path.dirname(path) or '.'}: no {os.path.basename(path)} (not a {cls.__name__} adapter directory)"
        )
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in known})
