"""Where the step model runs: eagerly (predict, chat, evaluation) or as an exported program (deploy, serving).

Both take NumPy in and give NumPy logits out ([rows, picks, vocab]), and share the engine's KV cache memory with the
model (no copies), so `StepEngine` does not know which one it drives.
"""

import json
import os

import numpy as np
import paddle


def step_inputs(n_layer: int, local_heads: int, head_dim: int):
    """The step program's inputs in feed order, as (name, shape, dtype); None is a size that varies
    per call. The exporter declares them, InferenceBackend feeds them, StepModel.forward takes them."""
    return [
        ("input_ids", [None, None], "int64"),
        (
            "cache",
            [n_layer, 2, None, local_heads, None, head_dim],
            "float32",
        ),  # the engine's KVCache, shared not copied
        ("slots", [None], "int64"),
        ("past", [None], "int64"),
        ("lens", [None], "int64"),
        ("picks", [None, None], "int64"),
    ]


STEP_INPUTS = tuple(name for name, _, _ in step_inputs(0, 0, 0))


class EagerBackend:
    """A `StepModel` in dygraph (any tensor-parallel degree: each rank holds its heads' cache)."""

    def __init__(self, step_model):
        self.model = step_model
        config = step_model.config
        self.n_layer, self.n_head, self.head_dim = config.n_layer, step_model.local_heads, config.head_dim
        self.vocab_size, self.cache_dtype = config.vocab_size, "float32"

    def forward(self, ids, cache, slots, past, lens, picks) -> np.ndarray:
        with paddle.no_grad():
            logits = self.model(
                paddle.to_tensor(ids), cache.tensor, *(paddle.to_tensor(a) for a in (slots, past, lens, picks))
            )
        return logits.numpy()


class InferenceBackend:
    """The exported step program under `paddle.inference`."""

    def __init__(self, predictor, info: dict):
        self.predictor = predictor
        self.n_layer, self.n_head, self.head_dim = info["n_layer"], info["n_head"], info["head_dim"]
        self.vocab_size, self.cache_dtype = info["vocab_size"], "float32"
        self._handles = {name: predictor.get_input_handle(name) for name in STEP_INPUTS}
        self._output = predictor.get_output_handle(predictor.get_output_names()[0])

    def forward(self, *inputs) -> np.ndarray:
        for name, value in zip(STEP_INPUTS, inputs, strict=True):
            if name == "cache":
                self._handles[name].share_external_data(
                    value.tensor
                )  # zero-copy: the program writes the new keys/values into it
            else:
                self._handles[name].copy_from_cpu(value)
        self.predictor.run()
        return self._output.copy_to_cpu()


def read_export_info(model_dir: str) -> dict:
    path = os.path.join(model_dir, "export_info.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
