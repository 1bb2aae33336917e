"""Generation settings: one type for predict, chat, export defaults, deploy and serving, and the
decoding flags of every command line that generates (their values become a GenerationConfig)."""

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence

STRATEGIES = ("greedy_search", "sampling", "beam_search")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS cannot be chosen before this many new tokens (PaddleNLP's min_length)
    decode_strategy: str = "greedy_search"
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0  # CTRL's: seen tokens' logits divided (positive) or multiplied (negative)
    presence_penalty: float = 0.0  # OpenAI's: logit -= presence * [token already generated]
    frequency_penalty: float = 0.0  # OpenAI's: logit -= frequency * (times token already generated)
    num_beams: int = 1
    length_penalty: float = (
        1.0  # beam search: a hypothesis scores sum(log p) / new_tokens ** length_penalty (HF's rule)
    )
    eos_token_id: int = 2
    pad_token_id: int = 3
    seed: Optional[int] = None  # sampling without a seed draws one
    logprobs: Optional[int] = None  # record each new token's log-probability and this many top alternatives
    prompt_logprobs: Optional[int] = (
        None  # score the prompt too (its tokens' log-probabilities, this many alternatives)
    )

    def validate(self) -> None:
        if self.decode_strategy not in STRATEGIES:
            raise ValueError(f"--decode_strategy {self.decode_strategy}: choose from {', '.join(STRATEGIES)}")
        checks = (
            # 0 new tokens only makes sense when the prompt itself is scored (OpenAI's echo with max_tokens 0)
            (
                self.max_new_tokens >= (0 if self.prompt_logprobs is not None else 1),
                f"--max_new_tokens {self.max_new_tokens}: must be >= 1",
            ),
            (self.top_k >= 0, f"--top_k {self.top_k}: must be >= 0 (0 = no top-k)"),
            (0.0 < self.top_p <= 1.0, f"--top_p {self.top_p}: must be in (0, 1]"),
            (
                self.temperature > 0.0,
                f"--temperature {self.temperature}: must be > 0 (use --decode_strategy greedy_search for argmax)",
            ),
            (self.repetition_penalty > 0.0, f"--repetition_penalty {self.repetition_penalty}: must be > 0"),
            (-2.0 <= self.presence_penalty <= 2.0, f"--presence_penalty {self.presence_penalty}: must be in [-2, 2]"),
            (
                -2.0 <= self.frequency_penalty <= 2.0,
                f"--frequency_penalty {self.frequency_penalty}: must be in [-2, 2]",
            ),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs {self.logprobs}: must be in [0, 20]"),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
                f"prompt_logprobs {self.prompt_logprobs}: must be in [0, 20]",
            ),
            (self.num_beams >= 1, f"--num_beams {self.num_beams}: must be >= 1"),
            (
                0 <= self.min_new_tokens <= max(self.max_new_tokens, 0),
                f"min_new_tokens {self.min_new_tokens}: must be in [0, max_new_tokens]",
            ),
            (
                self.min_new_tokens == 0 or self.decode_strategy != "beam_search",
                "min_new_tokens is not supported with beam search",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.decode_strategy == "beam_search" and self.num_beams < 2:
            raise ValueError("--decode_strategy beam_search needs --num_beams >= 2")
        if self.num_beams > 1 and self.decode_strategy != "beam_search":
            raise ValueError(f"--num_beams {self.num_beams} goes with --decode_strategy beam_search")


# The fields a user chooses: --flags of every generating command line, and the defaults an exported
# generation_config.json carries (all but the seed: an exported program is not tied to one).
_FLAGS = {  # field: (type, help)
    "max_new_tokens": (int, None),
    "decode_strategy": (str, None),
    "top_k": (int, None),
    "top_p": (float, None),
    "temperature": (float, None),
    "repetition_penalty": (float, None),
    "num_beams": (int, "beams per prompt (with --decode_strategy beam_search)"),
    "length_penalty": (float, "beam search: hypotheses score sum(log p) / length ** length_penalty"),
    "seed": (int, None),
}
EXPORTED_FIELDS = tuple(name for name in _FLAGS if name != "seed")


def add_decoding_flags(group, defaults: Mapping[str, object], max_new_tokens_aliases: Sequence[str] = ()) -> None:
    """--max_new_tokens, --decode_strategy ... --seed: one flag per GenerationConfig field a user sets.

    A flag missing from `defaults` defaults to None, for `from_flags` to fill in (deploy: from the
    exported generation_config.json)."""
    for name, (type_, help_) in _FLAGS.items():
        aliases = max_new_tokens_aliases if name == "max_new_tokens" else ()
        choices = STRATEGIES if name == "decode_strategy" else None
        group.add_argument(
            f"--{name}", *aliases, dest=name, type=type_, default=defaults.get(name), choices=choices, help=help_
        )


def from_flags(args, defaults: Optional[Mapping[str, object]] = None, **fixed) -> GenerationConfig:
    """The settings a command line asks for, checked: each field from its flag when given (not None),
    else from `defaults`, else GenerationConfig's own; `fixed` (EOS and pad ids) wins over both."""
    defaults, values = defaults or {}, {}
    for field in fields(GenerationConfig):
        flag = getattr(args, field.name, None)
        if flag is not None or field.name in defaults:
            values[field.name] = flag if flag is not None else defaults[field.name]
    config = GenerationConfig(**{**values, **fixed})
    config.validate()
    return config
