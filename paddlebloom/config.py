"""BLOOM's config.json, read and written in the form PaddleNLP's BloomConfig and Hugging Face accept."""

import json
import os
from dataclasses import asdict, dataclass, fields

CONFIG_NAME = "config.json"


@dataclass
class BloomConfig:
    vocab_size: int = 250880
    hidden_size: int = 1024
    n_layer: int = 24
    n_head: int = 16
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 3
    unk_token_id: int = 0
    apply_residual_connection_post_layernorm: bool = False
    tensor_parallel_degree: int = 1
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_head

    def validate_tensor_parallel(self, degree: int) -> None:
        for name, value in (("n_head", self.n_head), ("vocab_size", self.vocab_size)):
            if value % degree:
                raise ValueError(f"--tensor_parallel_degree {degree} does not divide the model's {name}={value}")

    @classmethod
    def from_dict(cls, raw: dict) -> "BloomConfig":
        raw = dict(raw)
        # Hugging Face / Megatron spellings of the same fields.
        for alias, name in (
            ("n_embed", "hidden_size"),
            ("num_attention_heads", "n_head"),
            ("num_hidden_layers", "n_layer"),
        ):
            if alias in raw and name not in raw:
                raw[name] = raw[alias]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def load(cls, directory: str) -> "BloomConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory}: no {CONFIG_NAME} (not a BLOOM checkpoint directory)")
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_dict(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(model_type="bloom", architectures=["BloomForCausalLM"], n_embed=self.hidden_size, use_cache=True)
        return out

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
