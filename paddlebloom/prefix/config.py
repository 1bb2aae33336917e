"""Prefix-tuning settings, stored as PaddleNLP's prefix_config.json."""

from dataclasses import dataclass

PREFIX_CONFIG = "prefix_config.json"
PREFIX_WEIGHTS = "prefix_model_state.pdparams"


@dataclass
class PrefixConfig:
    num_prefix_tokens: int = 64
    prefix_projection: bool = False
    prefix_projection_hidden_size: int = 64
    prefix_dropout: float = 0.0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    hidden_size: int = 0
    tensor_parallel_degree: int = 1
    base_model_name_or_path: str = ""
