"""Dynamic-graph decoding with a KV cache: left-padded batches, greedy or sampling, streaming.

Works unchanged under tensor parallelism: logits are gathered to the full vocabulary on every
rank and the random numbers come from the same seed, so all ranks choose the same tokens.
"""
import argparse
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import paddle

from . import sampling
from .data.formats import TEMPLATES
from .parallel.collectives import max_over_tp


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    decode_strategy: str = "greedy_search"  # or "sampling"
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int = 2
    pad_token_id: int = 3
    seed: Optional[int] = None

    def validate(self) -> None:
        if self.decode_strategy not in ("greedy_search", "sampling"):
            raise ValueError(f"--decode_strategy {self.decode_strategy!r}: choose greedy_search or sampling")
        if self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0 or self.top_k < 0:
            raise ValueError("need max_new_tokens >= 1, temperature > 0, 0 < top_p <= 1, repetition_penalty > 0, top_k >= 0")


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--src_length", type=int, default=1024, help="prompt tokens kept (from the end)")
    g.add_argument("--max_new_tokens", "--tgt_length", dest="max_new_tokens", type=int, default=128)
    g.add_argument("--decode_strategy", default="greedy_search", choices=("greedy_search", "sampling"))
    g.add_argument("--top_k", type=int, default=0)
    g.add_argument("--top_p", type=float, default=1.0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--repetition_penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--template", default="belle", choices=sorted(TEMPLATES), help="prompt template (paddlebloom.data.formats)")


def generation_config(args, tokenizer) -> GenerationConfig:
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, decode_strategy=args.decode_strategy, top_k=args.top_k, top_p=args.top_p,
                              temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, seed=args.seed)
    config.validate()
    return config


def left_pad(prompts_ids: Sequence[Sequence[int]], pad_token_id: int):
    """Left-padded ids and attention mask (numpy int64): BLOOM's ALiBi needs the mask."""
    width = max(len(p) for p in prompts_ids)
    ids = np.full((len(prompts_ids), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(prompts_ids), width), dtype=np.int64)
    for row, prompt in enumerate(prompts_ids):
        if len(prompt):
            ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    return ids, mask


def agreed_seed(seed: Optional[int]):
    """The seed as an int64 [1] tensor; unseeded, a random one that every tensor-parallel rank
    shares (ranks that drew different tokens would feed different inputs into one sharded model)."""
    if seed is not None:
        return paddle.to_tensor([seed], dtype="int64")
    return max_over_tp(paddle.to_tensor([random.randrange(2**31)], dtype="int64"))


@paddle.no_grad()
def generate_ids(model, prompts_ids: Sequence[Sequence[int]], config: GenerationConfig,
                 stream_callback: Optional[Callable[[List[Optional[int]]], None]] = None) -> List[List[int]]:
    """New tokens for each prompt (EOS not included). stream_callback gets each step's tokens
    (None for rows already finished)."""
    config.validate()
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("an empty prompt cannot be continued")
    ids, mask = (paddle.to_tensor(a) for a in left_pad(prompts_ids, config.pad_token_id))
    batch = ids.shape[0]
    strategy = paddle.to_tensor([sampling.SAMPLING if config.decode_strategy == "sampling" else sampling.GREEDY], dtype="int64")
    knobs = [paddle.to_tensor([v], dtype=d) for v, d in ((config.top_k, "int64"), (config.top_p, "float32"), (config.temperature, "float32"), (config.repetition_penalty, "float32"))]
    rng = sampling.initial_state(agreed_seed(config.seed), batch)  # the exported program's generator
    out = model(ids, attention_mask=mask, use_cache=True, last_logits_only=True)
    seen = sampling.seen_tokens(ids, mask, out.logits.shape[-1])
    results: List[List[int]] = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    for _ in range(config.max_new_tokens):
        token, rng = sampling.choose_next(out.logits[:, -1], seen, strategy, *knobs, rng)
        chosen = token.numpy()[:, 0]
        step = []
        for row, t in enumerate(chosen):
            if finished[row] or t == config.eos_token_id:
                finished[row] = True
                step.append(None)
            else:
                results[row].append(int(t))
                step.append(int(t))
        if stream_callback is not None:
            stream_callback(step)
        if finished.all():
            break
        seen = sampling.mark_seen(seen, token)
        mask = paddle.concat([mask, paddle.ones([batch, 1], dtype=mask.dtype)], axis=1)
        out = model(token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True, last_logits_only=True)
    return results


def encode_prompts(tokenizer, prompts: Sequence[str], src_length: Optional[int] = None) -> List[List[int]]:
    """Token ids of each prompt; a prompt longer than src_length keeps its end (the question)."""
    encoded = tokenizer.encode_batch(list(prompts))
    return [ids[-src_length:] if src_length else ids for ids in encoded]


def generate_text(model, tokenizer, prompts: Sequence[str], config: GenerationConfig, src_length: Optional[int] = None,
                  batch_size: int = 8) -> List[str]:
    """Decoded answers, in batches of batch_size left-padded prompts."""
    encoded = encode_prompts(tokenizer, prompts, src_length)
    answers: List[str] = []
    for start in range(0, len(encoded), batch_size):
        for ids in generate_ids(model, encoded[start:start + batch_size], config):
            answers.append(tokenizer.decode(ids))
    return answers
