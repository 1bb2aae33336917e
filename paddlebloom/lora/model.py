"""LoRA as an Adapter: apply, save, load, merge and switch off LoRA branches on our BloomForCausalLM.

An adapter directory holds lora_config.json + lora_model_state.pdparams (PaddleNLP's names);
under tensor parallelism the saved weights are merged to full size, and split again on load.
LoRA changes the model in place (its linear layers are wrapped), so `apply` returns the same model.
"""

from contextlib import contextmanager
from typing import Dict

import numpy as np
import paddle

from ..adapter import FileAdapter, attach
from ..checkpoint import assign_full_values, gather_full_state
from ..parallel.layers import split_axis
from .config import LORA_CONFIG, LORA_WEIGHTS, LoRAConfig
from .layer import LoRALinear


class LoRA(FileAdapter):
    name = "lora"
    config_class, config_file, weights_file = LoRAConfig, LORA_CONFIG, LORA_WEIGHTS

    def apply(self, model: paddle.nn.Layer, seed: int = 0) -> paddle.nn.Layer:
        """Wrap every matching linear layer and freeze everything except the LoRA weights.

        A is drawn Kaiming-uniform (as peft) at full size from a seeded NumPy generator and then
        split, so a run starts from the same adapter at every tensor-parallel degree; B starts at 0.
        """
        config = self.config
        targets = [(name, layer) for name, layer in model.named_sublayers() if config.matches(name)]
        if not targets:
            raise ValueError(f"--lora_target_modules {config.target_modules} matches no layer of the model")
        layers = dict(model.named_sublayers())
        for name, layer in targets:
            parent_name, _, attr = name.rpartition(".")
            setattr(
                layers[parent_name] if parent_name else model,
                attr,
                LoRALinear(layer, config.r, config.lora_alpha, config.lora_dropout),
            )
        rng = np.random.RandomState(seed)
        full = {}
        for name, param in sorted(self.trainable_state(model).items()):
            if name.endswith("lora_A"):
                fan_in = param.shape[0] * (model.parallel.tp_degree if split_axis(param) == 0 else 1)
                bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
                full[name] = rng.uniform(-bound, bound, size=(fan_in, config.r))
        assign_full_values(model, full)
        for name, param in model.named_parameters():
            param.stop_gradient = not name.endswith(("lora_A", "lora_B"))
        return attach(model, self)

    def trainable_state(self, model) -> Dict[str, paddle.Tensor]:
        return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}

    def full_weights(self, model):
        return gather_full_state(self.trainable_state(model), model.parallel)

    def load_weights(self, model, directory: str) -> None:
        full, own = self.read_weights(directory), self.trainable_state(model)
        if set(full) != set(own):
            missing = sorted(set(own) ^ set(full))[0]
            raise ValueError(
                f"{directory}: adapter does not fit the model (e.g. {missing}); check --lora_target_modules"
            )
        assign_full_values(model, full, where=directory)

    def merge(self, model):
        """Fold every LoRA branch into its base weight, then unwrap: an ordinary model again."""
        layers = dict(model.named_sublayers())
        for name, layer in list(layers.items()):
            if isinstance(layer, LoRALinear):
                layer.merge()
                parent_name, _, attr = name.rpartition(".")
                setattr(layers[parent_name] if parent_name else model, attr, layer.base[0])
        for param in model.parameters():
            param.stop_gradient = False
        del model.adapter
        return model, None

    @contextmanager
    def disabled(self, model):
        """Run the base model inside the block: every LoRA branch is skipped, nothing is copied.

        DPO with LoRA uses this as its reference model (as peft's `disable_adapter()` does for TRL).
        """
        layers = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear)]
        for layer in layers:
            layer.disabled = True
        try:
            yield model
        finally:
            for layer in layers:
                layer.disabled = False
