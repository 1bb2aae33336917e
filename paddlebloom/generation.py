"""Dynamic-graph decoding: the step-wise engine (paddlebloom.engine) driving the eager model.

The same engine, sampler and KV-cache kernel as the exported program, so predict, chat and deploy
choose the same tokens. Works unchanged under tensor parallelism: each rank keeps its heads'
cache, logits are gathered to the full vocabulary on every rank and the random numbers come from
one agreed seed, so all ranks choose the same tokens.
"""

import argparse
import random
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence

import numpy as np
import paddle

from .adapter import adapter_of
from .data.templates import TEMPLATES
from .engine import GenerationConfig, StepEngine
from .engine.backends import EagerBackend
from .engine.settings import add_decoding_flags, from_flags
from .engine.step_model import StepModel
from .parallel.collectives import max_over_tp


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--src_length", type=int, default=1024, help="prompt tokens kept (from the end)")
    add_decoding_flags(
        g, {**asdict(GenerationConfig()), "max_new_tokens": 128}, max_new_tokens_aliases=("--tgt_length",)
    )
    g.add_argument(
        "--template", default="belle", choices=sorted(TEMPLATES), help="prompt template (paddlebloom.data.formats)"
    )


def generation_config(args, tokenizer) -> GenerationConfig:
    return from_flags(args, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def left_pad(prompts_ids: Sequence[Sequence[int]], pad_token_id: int):
    """Left-padded ids and attention mask (numpy int64): BLOOM's ALiBi needs the mask."""
    width = max(len(p) for p in prompts_ids)
    ids = np.full((len(prompts_ids), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(prompts_ids), width), dtype=np.int64)
    for row, prompt in enumerate(prompts_ids):
        if len(prompt):
            ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    return ids, mask


def agreed_seed(seed: Optional[int]) -> int:
    """The seed; unseeded, a random one that every tensor-parallel rank shares (ranks that drew
    different tokens would feed different inputs into one sharded model)."""
    if seed is not None:
        return int(seed)
    return int(max_over_tp(paddle.to_tensor([random.randrange(2**31)], dtype="int64")).numpy()[0])


def step_engine(model, slots: int) -> StepEngine:
    """The model's decode engine (built once per model; the float32 step model shares its weights)."""
    engine = getattr(model, "_step_engine", None)
    if engine is None:
        base, prefix_kv = adapter_of(model).step_parts(model)  # a prefix's keys/values start every cache
        engine = StepEngine(EagerBackend(StepModel(base)), slots=slots, max_len=256, prefix_kv=prefix_kv)
        object.__setattr__(model, "_step_engine", engine)
    engine.cache.ensure(slots, engine.cache.max_len)
    return engine


def forget_step_engine(model) -> None:
    """Drop the model's cached engine: a trained prefix changes, and the engine holds a copy of it
    (weights of the float32 step model are the model's own, so they need no refresh)."""
    if "_step_engine" in model.__dict__:
        object.__delattr__(model, "_step_engine")


@paddle.no_grad()
def generate_ids(
    model,
    prompts_ids: Sequence[Sequence[int]],
    config: GenerationConfig,
    stream_callback: Optional[Callable[[List[Optional[int]]], None]] = None,
) -> List[List[int]]:
    """New tokens for each prompt (EOS not included). stream_callback gets each step's tokens
    (None for rows that produced nothing in that step)."""
    config.validate()
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("an empty prompt cannot be continued")
    seed = agreed_seed(config.seed) if config.decode_strategy == "sampling" else 0
    engine = step_engine(model, max(1, len(prompts_ids)))
    return engine.generate(prompts_ids, config, seeds=[seed] * len(prompts_ids), stream_callback=stream_callback)


def encode_prompts(tokenizer, prompts: Sequence[str], src_length: Optional[int] = None) -> List[List[int]]:
    """Token ids of each prompt; a prompt longer than src_length keeps its end (the question)."""
    encoded = tokenizer.encode_batch(list(prompts))
    return [ids[-src_length:] if src_length else ids for ids in encoded]


def generate_text(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig,
    src_length: Optional[int] = None,
    batch_size: int = 8,
) -> List[str]:
    """Decoded answers, in batches of batch_size left-padded prompts."""
    encoded = encode_prompts(tokenizer, prompts, src_length)
    answers: List[str] = []
    for start in range(0, len(encoded), batch_size):
        for ids in generate_ids(model, encoded[start : start + batch_size], config):
            answers.append(tokenizer.decode(ids))
    return answers
