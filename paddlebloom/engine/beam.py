"""Beam search on the step engine: each beam is a KV-cache slot; forking a beam copies its filled positions.

The search is Hugging Face's `generate(num_beams=N, length_penalty=L)` (transformers 4.57,
early_stopping=False), checked against it in tests/test_engine.py. Each step every beam's
log-softmax (then the repetition penalty, applied to those scores as HF's processors do) is added
to its running score and the best 2N (beam, token) candidates are ranked. Of the first N, those
ending in EOS, and at the last step all of them, become finished hypotheses scored
sum_logprobs / new_tokens ** L (EOS counted); the best N candidates that did not stop continue.
The search ends when N hypotheses are finished and the best running beam, at its current length,
cannot beat the worst of them, or at max_new_tokens. The best hypothesis wins (EOS removed).
"""

from dataclasses import replace
from typing import List, Tuple

import numpy as np

from . import sampler
from .settings import GenerationConfig


class _Hypotheses:
    def __init__(self, n: int, length_penalty: float):
        self.n, self.length_penalty = n, length_penalty
        self.items: List[Tuple[float, List[int]]] = []

    def score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs / (max(length, 1) ** self.length_penalty)

    def add(self, tokens: List[int], sum_logprobs: float, length: int) -> None:
        self.items.append((self.score(sum_logprobs, length), tokens))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.n :]

    def cannot_improve(self, best_running: float, length: int) -> bool:
        return len(self.items) == self.n and self.score(best_running, length) <= self.items[-1][0]


def _step_scores(beams, logits: np.ndarray, penalty: float) -> np.ndarray:
    scores = sampler.log_softmax(logits)
    if penalty != 1.0:
        scores = np.stack([sampler.penalise(scores[b], beam.seen, penalty) for b, beam in enumerate(beams)])
    return scores


def beam_search(engine, prompt: List[int], config: GenerationConfig) -> List[int]:
    """The best hypothesis's new tokens (EOS excluded)."""
    n, eos = config.num_beams, config.eos_token_id
    engine.cache.ensure(n, engine.needed_length(len(prompt), config.max_new_tokens))
    if engine.cache.free_slots() < n:
        raise ValueError(f"--num_beams {n} needs {n} free KV-cache slots; {engine.cache.free_slots()} are free")
    config = replace(config, decode_strategy="greedy_search", num_beams=1)  # what each beam's Sequence records
    beams = [engine.start(prompt, config, seed=0)]
    logits = np.stack(engine.prefill_logits(beams))
    scores = np.zeros(1)
    hyps = _Hypotheses(n, config.length_penalty)
    for step in range(config.max_new_tokens):
        total = _step_scores(beams, logits, config.repetition_penalty) + scores[:, None]
        flat = total.reshape(-1)
        k = min(2 * n, flat.size)
        top = np.argpartition(-flat, k - 1)[:k]
        top = top[np.argsort(-flat[top], kind="stable")]
        candidates = [divmod(int(i), total.shape[1]) + (float(flat[i]),) for i in top]
        last, length = step + 1 == config.max_new_tokens, step + 1
        for parent, token, score in candidates[:n]:
            if token == eos or last:
                hyps.add(beams[parent].tokens + ([] if token == eos else [token]), score, length)
        running = [c for c in candidates if c[1] != eos][:n]
        if last or not running or hyps.cannot_improve(running[0][2], length):
            break
        beams = _advance(engine, beams, running)
        scores = np.array([score for _, _, score in running])
        logits = engine.decode_logits(beams)
    for beam in beams:
        engine.release(beam)
    return hyps.items[0][1] if hyps.items else []


def _advance(engine, beams, chosen):
    """The next beams: child i continues `chosen[i] = (parent, token, score)`. A parent's first child
    takes over its slot; further children get a copy of it in a slot freed by a childless parent."""
    with_children = {parent for parent, _, _ in chosen}
    for b, beam in enumerate(beams):
        if b not in with_children:
            engine.release(beam)
    history = [(list(beam.tokens), set(beam.seen)) for beam in beams]  # before any child appends
    claimed, out = set(), []
    for parent, token, _ in chosen:
        source = beams[parent]
        if parent in claimed:
            child = engine.start(source.prompt, source.config, seed=0)
            engine.cache.copy(source.slot, child.slot, source.filled)
            child.filled, child.prompt_done = source.filled, source.prompt_done
        else:
            child = source
            claimed.add(parent)
        tokens, seen = history[parent]
        child.tokens, child.seen = tokens + [token], seen | {token}
        child.next_input = token
        out.append(child)
    return out
