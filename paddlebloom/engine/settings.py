"""Generation settings: one type for predict, chat, export defaults, deploy and serving."""
from dataclasses import dataclass
from typing import Optional

STRATEGIES = ("greedy_search", "sampling", "beam_search")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    decode_strategy: str = "greedy_search"
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: a hypothesis scores sum(log p) / new_tokens ** length_penalty (HF's rule)
    eos_token_id: int = 2
    pad_token_id: int = 3
    seed: Optional[int] = None  # sampling without a seed draws one

    def validate(self) -> None:
        if self.decode_strategy not in STRATEGIES:
            raise ValueError(f"--decode_strategy {self.decode_strategy}: choose from {', '.join(STRATEGIES)}")
        checks = (
            (self.max_new_tokens >= 1, f"--max_new_tokens {self.max_new_tokens}: must be >= 1"),
            (self.top_k >= 0, f"--top_k {self.top_k}: must be >= 0 (0 = no top-k)"),
            (0.0 < self.top_p <= 1.0, f"--top_p {self.top_p}: must be in (0, 1]"),
            (self.temperature > 0.0, f"--temperature {self.temperature}: must be > 0 (use --decode_strategy greedy_search for argmax)"),
            (self.repetition_penalty > 0.0, f"--repetition_penalty {self.repetition_penalty}: must be > 0"),
            (self.num_beams >= 1, f"--num_beams {self.num_beams}: must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.decode_strategy == "beam_search" and self.num_beams < 2:
            raise ValueError("--decode_strategy beam_search needs --num_beams >= 2")
        if self.num_beams > 1 and self.decode_strategy != "beam_search":
            raise ValueError(f"--num_beams {self.num_beams} goes with --decode_strategy beam_search")
