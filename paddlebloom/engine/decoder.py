"""The step-wise decode engine: sequences hold KV-cache slots, join and leave a running batch between steps.

A backend runs the step model (`forward(ids, cache, slots, past, lens) -> logits [b, vocab]`,
eagerly or as an exported program); this module decides what runs: `prefill` a set of new
sequences (prompts in chunks, right-padded, written into their slots), then `decode` one token for
every running sequence per call. Nothing is ever recomputed: a sequence's context lives in its
slot from its first prefill to its release. `generate` is the plain batch loop over that
(continuous: a finished row's slot goes to the next waiting prompt at the next step); the server
drives `prefill`/`decode` itself.
"""

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Set, Tuple
from typing import Sequence as Seq

import numpy as np

from . import sampler
from .beam import beam_search
from .kv_cache import KVCache
from .settings import GenerationConfig

PREFILL_CHUNK = 512  # prompt tokens per row per call: bounds activation memory for long prompts
SCORE_LOGITS = 2**25  # logits per call when scoring prompts (128 MB): every position's vocabulary row comes back

TokenLogprob = Tuple[float, List[Tuple[int, float]]]  # (log p of the token, [(alternative, log p)] most likely first)


@dataclass
class Sequence:
    """One prompt being continued. `tokens` are the new ones (EOS excluded)."""

    prompt: List[int]
    config: GenerationConfig
    slot: int = -1
    filled: int = 0  # positions of the slot holding keys/values
    prompt_done: int = 0  # prompt tokens already in the slot
    next_input: Optional[int] = None  # the chosen token whose keys/values are not in the slot yet
    tokens: List[int] = field(default_factory=list)
    seen: Set[int] = field(default_factory=set)  # prompt and new tokens (the repetition penalty's set)
    counts: Counter = field(default_factory=Counter)  # new tokens only (presence and frequency penalties, as OpenAI)
    rng: Optional[sampler.RowGenerator] = None
    finish_reason: Optional[str] = None  # "stop" (EOS), "length", "cancelled"
    logprobs: List[TokenLogprob] = field(
        default_factory=list
    )  # per new token (and a final EOS), when config.logprobs is set
    prompt_logprobs: List[Optional[TokenLogprob]] = field(default_factory=list)  # per prompt token (the first: None)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class StepEngine:
    def __init__(self, backend, slots: int = 8, max_len: int = 1024, prefix_kv: Optional[np.ndarray] = None):
        self.backend = backend
        self.prefix_kv = prefix_kv  # [2 * n_layer, heads, n_prefix, head_dim] or None
        self.n_prefix = 0 if prefix_kv is None else prefix_kv.shape[2]
        self.cache = KVCache(backend.n_layer, backend.n_head, backend.head_dim, slots, max_len, backend.cache_dtype)

    # ---- building blocks
    def needed_length(self, prompt_len: int, max_new_tokens: int) -> int:
        return self.n_prefix + prompt_len + max_new_tokens

    def start(self, prompt: Seq[int], config: GenerationConfig, seed: Optional[int] = None) -> Sequence:
        """Claim a slot for a prompt (prefill it with `prefill`)."""
        if not prompt:
            raise ValueError("an empty prompt cannot be continued")
        need = self.needed_length(len(prompt), max(config.max_new_tokens, 1))
        if need > self.cache.max_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_new_tokens {config.max_new_tokens} needs {need} cache "
                f"positions; this engine has {self.cache.max_len}"
            )
        seq = Sequence(list(prompt), config, seen=set(prompt))
        seq.rng = sampler.RowGenerator(
            seed if seed is not None else (config.seed if config.seed is not None else random.randrange(2**31))
        )
        seq.slot = self.cache.allocate(self.prefix_kv)
        seq.filled = self.n_prefix
        return seq

    def release(self, seq: Sequence, reason: Optional[str] = None) -> None:
        if reason and not seq.finished:
            seq.finish_reason = reason
        if seq.slot >= 0:
            self.cache.release(seq.slot)
            seq.slot = -1

    def run(self, rows: List[Sequence], chunks: List[List[int]], every_position: bool = False) -> np.ndarray:
        """Feed each row its chunk of new tokens; logits [rows, vocab] after each row's last one
        ([rows, width, vocab] after each of them with every_position)."""
        width = max(len(c) for c in chunks)
        ids = np.zeros([len(rows), width], dtype=np.int64)
        for r, chunk in enumerate(chunks):
            ids[r, : len(chunk)] = chunk
        slots = np.array([s.slot for s in rows], dtype=np.int64)
        past = np.array([s.filled for s in rows], dtype=np.int64)
        lens = np.array([len(c) for c in chunks], dtype=np.int64)
        picks = np.tile(np.arange(width, dtype=np.int64), (len(rows), 1)) if every_position else (lens - 1)[:, None]
        logits = self.backend.forward(ids, self.cache, slots, past, lens, picks)
        for seq, chunk in zip(rows, chunks):
            seq.filled += len(chunk)
        return logits if every_position else logits[:, 0]

    def prefill_logits(self, seqs: List[Sequence]) -> List[np.ndarray]:
        """Put the prompts into their slots; the logits after each prompt's last token. Prompts whose
        config asks for prompt_logprobs are scored on the way (every position's logits come back)."""
        logits = {}
        for scoring in (False, True):
            pending = [
                s for s in seqs if s.prompt_done < len(s.prompt) and (s.config.prompt_logprobs is not None) == scoring
            ]
            while pending:
                size = (
                    max(1, min(PREFILL_CHUNK, SCORE_LOGITS // (self.backend.vocab_size * len(pending))))
                    if scoring
                    else PREFILL_CHUNK
                )
                chunks = [s.prompt[s.prompt_done : s.prompt_done + size] for s in pending]
                out = self.run(pending, chunks, every_position=scoring)
                for r, (seq, chunk) in enumerate(zip(pending, chunks)):
                    if scoring:
                        self._score_prompt(seq, out[r, : len(chunk)])
                    seq.prompt_done += len(chunk)
                    if seq.prompt_done == len(seq.prompt):
                        logits[id(seq)] = out[r, len(chunk) - 1] if scoring else out[r]
                pending = [s for s in pending if s.prompt_done < len(s.prompt)]
        return [logits[id(s)] for s in seqs]

    @staticmethod
    def _score_prompt(seq: Sequence, rows: np.ndarray) -> None:
        """Log-probabilities of the prompt tokens that these rows (positions prompt_done...) predict:
        the model's own distribution (no penalties or temperature: nothing was chosen there)."""
        if seq.prompt_done == 0:
            seq.prompt_logprobs.append(None)  # the first token has no context to be predicted from
        for j, row in enumerate(rows):
            position = seq.prompt_done + j + 1
            if position < len(seq.prompt):
                seq.prompt_logprobs.append(
                    sampler.token_logprob(sampler.log_softmax(row), seq.prompt[position], seq.config.prompt_logprobs)
                )

    def prefill(self, seqs: List[Sequence]) -> List[Optional[int]]:
        """Prefill and choose each sequence's first token (None where it is EOS, or where only the
        prompt was to be scored: max_new_tokens 0)."""
        return [self.first_token(s, row) for s, row in zip(seqs, self.prefill_logits(seqs))]

    def first_token(self, seq: Sequence, logits: np.ndarray) -> Optional[int]:
        if seq.config.max_new_tokens == 0:
            seq.finish_reason = "length"
            return None
        return self.choose(seq, logits)

    def decode_logits(self, seqs: List[Sequence]) -> np.ndarray:
        """Feed each sequence its last chosen token; the logits after it [rows, vocab]."""
        return self.run(seqs, [[s.next_input] for s in seqs])

    def decode(self, seqs: List[Sequence]) -> List[Optional[int]]:
        """One step for every running sequence: the new token of each (None when it just finished)."""
        return [self.choose(s, row) for s, row in zip(seqs, self.decode_logits(seqs))]

    def choose(self, seq: Sequence, logits: np.ndarray) -> Optional[int]:
        """Pick, record and return the next token; None (and a finish reason) at EOS."""
        c = seq.config
        row = sampler.penalise(logits, seq.seen, c.repetition_penalty)
        row = sampler.penalise_counts(row, seq.counts, c.presence_penalty, c.frequency_penalty)
        if len(seq.tokens) < c.min_new_tokens:
            row[c.eos_token_id] = -np.inf  # too early to stop (row is the penalised copy)
        if c.decode_strategy == "sampling":
            probs = sampler.sampling_probs(row, c.temperature, c.top_k, c.top_p)
            token = sampler.draw(probs, seq.rng.uniform())
            distribution = probs  # log-probabilities are of what the token was drawn from
        else:
            token = int(row.argmax())
            distribution = None
        if c.logprobs is not None:  # EOS too: clients count one entry per token asked for (as vLLM reports it)
            logp = sampler.log_softmax(row) if distribution is None else sampler.safe_log(distribution)
            seq.logprobs.append(sampler.token_logprob(logp, token, c.logprobs))
        if token == c.eos_token_id:
            seq.finish_reason = "stop"
            return None
        seq.tokens.append(token)
        seq.seen.add(token)
        seq.counts[token] += 1
        seq.next_input = token
        if len(seq.tokens) >= c.max_new_tokens:
            seq.finish_reason = "length"
        return token

    # ---- the batch loop
    def generate(
        self,
        prompts: Seq[Seq[int]],
        config: GenerationConfig,
        seeds: Optional[Seq[int]] = None,
        stream_callback: Optional[Callable[[List[Optional[int]]], None]] = None,
    ) -> List[List[int]]:
        """New tokens of each prompt (EOS excluded). Up to `slots` prompts run at once; a finished
        one's slot is refilled at the next step. stream_callback gets each step's token per prompt
        (None where a prompt produced nothing in that step)."""
        config.validate()
        if config.decode_strategy == "beam_search":
            return [beam_search(self, p, config) for p in prompts]
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be continued")
        longest = max((len(p) for p in prompts), default=0)
        self.cache.ensure(
            min(self.cache.slots, max(1, len(prompts))), self.needed_length(longest, config.max_new_tokens)
        )
        waiting = list(range(len(prompts)))[::-1]
        running: List[int] = []
        seqs: List[Optional[Sequence]] = [None] * len(prompts)
        while waiting or running:
            joining = []
            while waiting and self.cache.free_slots():
                i = waiting.pop()
                seqs[i] = self.start(prompts[i], config, None if seeds is None else seeds[i])
                joining.append(i)
            step: List[Optional[int]] = [None] * len(prompts)
            if joining:
                for i, token in zip(joining, self.prefill([seqs[i] for i in joining])):
                    step[i] = token
            decoding = [i for i in running if i not in joining]
            if decoding:
                for i, token in zip(decoding, self.decode([seqs[i] for i in decoding])):
                    step[i] = token
            running = decoding + joining
            if stream_callback is not None:
                stream_callback(step)
            for i in [i for i in running if seqs[i].finished]:
                self.release(seqs[i])
                running.remove(i)
        return [s.tokens for s in seqs]
