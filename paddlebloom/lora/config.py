"""LoRA settings, stored as PaddleNLP's lora_config.json."""

import re
from dataclasses import dataclass, field
from typing import List

LORA_CONFIG = "lora_config.json"
LORA_WEIGHTS = "lora_model_state.pdparams"
# The four Linear layers of a BLOOM block, by the short names users type.
BLOOM_LINEARS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@dataclass
class LoRAConfig:
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # PaddleNLP-style regexes over parameter-owner names; peft's BLOOM default is query_key_value.
    target_modules: List[str] = field(default_factory=lambda: [".*query_key_value.*"])
    merge_weights: bool = False
    tensor_parallel_degree: int = 1
    base_model_name_or_path: str = ""

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    @staticmethod
    def parse_targets(text: str) -> List[str]:
        """'qkv,dense_4h_to_h' / 'query_key_value' / '.*dense.*' → regexes PaddleNLP understands."""
        out = []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            name = {"qkv": "query_key_value"}.get(item, item)
            if name in BLOOM_LINEARS:
                out.append(rf".*\.{name}$" if name == "dense" else rf".*{name}.*")
            else:
                re.compile(item)
                out.append(item)
        if not out:
            raise ValueError("--lora_target_modules is empty")
        return out

    def matches(self, layer_name: str) -> bool:
        """Whether LoRA wraps this layer: one of BLOOM's linear layers, named by a target pattern."""
        return layer_name.split(".")[-1] in BLOOM_LINEARS and any(
            re.fullmatch(p, layer_name) for p in self.target_modules
        )
