"""Chunked continuous batching over the exported whole-loop generation program.

The program decodes a whole answer per call and takes one set of sampling scalars for its batch,
so we call it for a *chunk* of new tokens at a time: each call gets, for every running request,
its prompt plus the tokens it has produced so far, left-padded into one batch. Between calls the
scheduler hands the new tokens to each request's queue (so streaming sees them), drops requests
that are done (EOS, max_new_tokens, cancelled) and admits waiting ones. A request therefore joins
a running batch at the next chunk boundary instead of waiting for the batch's longest answer.

Re-reading the context every chunk costs a prefill per chunk; with chunks of 8+ tokens that is
the price of not exporting a second (single-step) program. Greedy tokens do not depend on the
chunking: each chunk starts from exactly the context the whole loop would have had, and the
repetition penalty's seen-token set is rebuilt from it.

Batching groups requests by their sampling scalars (the program shares them across the batch).
Sampling with an explicit seed runs in a batch of its own: the program's per-row generator
depends on the row index and the batch seed, so only alone is the answer a function of
(prompt, settings, seed). Unseeded sampling requests batch with each other freely.
"""
import itertools
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from ..deploy.predictor import GenerationPredictor, Sampling

_MIX = 0x9E3779B1  # odd multiplier: spreads consecutive chunk numbers over the seed space


class ServerBusy(Exception):
    """Every slot is taken (HTTP 429)."""


@dataclass
class Job:
    """One generation request as the scheduler sees it; `events` receives lists of new token ids,
    then a final ("done", finish_reason) tuple."""

    prompt: List[int]
    sampling: Sampling
    seeded: bool = False
    tokens: List[int] = field(default_factory=list)
    events: "queue.Queue" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = 0
    chunks: int = 0
    finish_reason: Optional[str] = None

    def cancel(self) -> None:
        """Called by the HTTP side when the client is gone or a stop string was seen."""
        self.cancelled.set()

    def batch_key(self):
        s = self.sampling
        if s.decode_strategy == "greedy_search":
            return ("greedy", s.repetition_penalty)
        key = ("sampling", s.top_k, s.top_p, s.temperature, s.repetition_penalty)
        return key + (("seeded", self.id),) if self.seeded else key


class Engine:
    """Owns the predictor; one scheduler thread is the only caller of the program."""

    def __init__(self, predictor: GenerationPredictor, max_batch_size: int = 8, max_concurrent: int = 32,
                 chunk_tokens: int = 8, batch_wait_ms: float = 10.0):
        if max_batch_size < 1 or max_concurrent < 1 or chunk_tokens < 1 or batch_wait_ms < 0:
            raise ValueError("--max_batch_size, --max_concurrent and --chunk_tokens must be >= 1 and --batch_wait_ms >= 0")
        self.predictor = predictor
        self.max_batch_size, self.max_concurrent = max_batch_size, max_concurrent
        self.chunk_tokens, self.batch_wait = chunk_tokens, batch_wait_ms / 1000.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._waiting: List[Job] = []
        self._active: List[Job] = []
        self._ids = itertools.count(1)
        self._unseeded_chunks = itertools.count()
        self._stopping = False
        self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "rejected_busy": 0, "program_calls": 0,
                      "tokens_generated": 0, "max_batch_size_seen": 0, "busy_seconds": 0.0}
        self.batch_sizes: Counter = Counter()
        self._thread = threading.Thread(target=self._run, name="paddlebloom-scheduler", daemon=True)
        self._thread.start()

    # ---- the HTTP side
    def submit(self, prompt: List[int], sampling: Sampling, seeded: bool = False) -> Job:
        sampling.validate()
        if not prompt:
            raise ValueError("empty prompt: nothing to generate from")
        with self._lock:
            if self._stopping:
                raise ServerBusy("the server is shutting down")
            if len(self._waiting) + len(self._active) >= self.max_concurrent:
                self.stats["rejected_busy"] += 1
                raise ServerBusy(f"all {self.max_concurrent} generation slots are busy; retry later")
            job = Job(list(prompt), sampling, seeded, id=next(self._ids))
            self._waiting.append(job)
            self.stats["requests"] += 1
            self._arrived.notify()
        return job

    def snapshot(self) -> Dict:
        with self._lock:
            return {**self.stats, "active": len(self._active), "waiting": len(self._waiting),
                    "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                    "max_batch_size": self.max_batch_size, "max_concurrent": self.max_concurrent, "chunk_tokens": self.chunk_tokens}

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._arrived.notify()
        self._thread.join(timeout=30)

    # ---- the scheduler thread
    def _admit(self) -> bool:
        """Move waiting jobs into the running set; when idle, block for one and then give others
        a short window to arrive so they share its first chunk. False when stopping."""
        with self._lock:
            if not self._active:
                while not self._waiting and not self._stopping:
                    self._arrived.wait()
                if self._stopping:
                    return False
                deadline = time.monotonic() + self.batch_wait
                while len(self._waiting) < self.max_batch_size and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            self._active.extend(self._waiting)
            self._waiting.clear()
            return not self._stopping

    def _run(self) -> None:
        while self._admit():
            for job in [j for j in self._active if j.cancelled.is_set()]:
                self._finish(job, "cancelled")
            if not self._active:
                continue
            # The oldest request picks the group, so no request waits behind a stream of others.
            key = self._active[0].batch_key()
            batch = [j for j in self._active if j.batch_key() == key][: self.max_batch_size]
            try:
                self._step(batch)
            except Exception as e:  # noqa: BLE001 - a failed call must fail its requests, not the server
                for job in batch:
                    self._finish(job, "error", f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        with self._lock:
            leftovers = self._active + self._waiting
            self._active, self._waiting = [], []
        for job in leftovers:
            job.events.put(("done", "error", "the server is shutting down"))

    def _step(self, batch: List[Job]) -> None:
        remaining = max(j.sampling.max_new_tokens - len(j.tokens) for j in batch)
        n = min(self.chunk_tokens, remaining)
        first = batch[0]
        if first.sampling.decode_strategy == "greedy_search":
            seed = 0
        elif first.seeded:  # alone in its batch: the chunk's seed follows from the request's seed and position
            seed = (first.sampling.seed + _MIX * (len(first.tokens) + 1)) % (2 ** 62)
        else:
            seed = (next(self._unseeded_chunks) * _MIX) % (2 ** 62)
        sampling = replace(first.sampling, max_new_tokens=n, seed=seed)
        began = time.perf_counter()
        outputs = self.predictor.generate([j.prompt + j.tokens for j in batch], sampling)
        with self._lock:
            self.stats["busy_seconds"] += time.perf_counter() - began
            self.stats["program_calls"] += 1
            self.stats["max_batch_size_seen"] = max(self.stats["max_batch_size_seen"], len(batch))
            self.batch_sizes[len(batch)] += 1
        for job, new in zip(batch, outputs):
            hit_eos = len(new) < n  # the program emits EOS and then pads; cut_at_eos dropped them
            new = new[: job.sampling.max_new_tokens - len(job.tokens)]
            job.tokens.extend(new)
            job.chunks += 1
            with self._lock:
                self.stats["tokens_generated"] += len(new)
            if new:
                job.events.put(new)
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
            elif hit_eos:
                self._finish(job, "stop")
            elif len(job.tokens) >= job.sampling.max_new_tokens:
                self._finish(job, "length")

    def _finish(self, job: Job, reason: str, message: str = "") -> None:
        with self._lock:
            if job in self._active:
                self._active.remove(job)
            self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        job.finish_reason = reason
        job.events.put(("done", reason, message))
