"""Continuous batching on the step-wise engine: requests join and leave the running batch between steps.

Each request owns a KV-cache slot from admission to its end, so its context is computed once (the
prefill) and every later call feeds one token per running request. One scheduler thread is the
only caller of the program. Per iteration it drops cancelled requests, admits waiting ones into
free slots (their prefill is one call), runs one decode step for the others, hands each request
its new tokens (grouped `chunk_tokens` to a streamed event) and frees the slots of finished ones.

Every request keeps its own settings and random stream (paddlebloom.engine.sampler), so greedy,
sampling and seeded sampling share batches: a seeded answer depends on (prompt, settings, seed)
only, whatever else runs beside it.
"""

import itertools
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..deploy.predictor import GenerationPredictor
from ..engine import GenerationConfig, Sequence
from ..engine.decoder import TokenLogprob


class ServerBusy(Exception):
    """Every slot is taken (HTTP 429)."""


@dataclass
class Job:
    """One answer (a choice) as the scheduler sees it; `events` receives lists of new token ids,
    then a final ("done", finish_reason, message) tuple. Each event also releases `signal`, which
    the jobs of one request share, so one handler can wait for whichever of its choices moves.
    `logprobs[i]` (when asked for) belongs to the i-th id sent, set before its event; with
    logprobs an answer that ends on EOS sends the EOS id last (for its log-probability only)."""

    prompt: List[int]
    sampling: GenerationConfig
    seeded: bool = False
    tokens: List[int] = field(default_factory=list)
    events: "queue.Queue" = field(default_factory=queue.Queue)
    signal: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = 0
    chunks: int = 0
    finish_reason: Optional[str] = None
    sequence: Optional[Sequence] = None
    unsent: List[int] = field(default_factory=list)
    logprobs: List[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: List[Optional[TokenLogprob]] = field(default_factory=list)

    def cancel(self) -> None:
        """Called by the HTTP side when the client is gone or a stop string was seen."""
        self.cancelled.set()

    def put(self, event) -> None:
        self.events.put(event)
        self.signal.release()


class Engine:
    def __init__(
        self,
        predictor: GenerationPredictor,
        max_batch_size: int = 8,
        max_concurrent: int = 32,
        chunk_tokens: int = 1,
        batch_wait_ms: float = 10.0,
        max_context: int = 2048,
    ):
        if max_batch_size < 1 or max_concurrent < 1 or chunk_tokens < 1 or batch_wait_ms < 0:
            raise ValueError(
                "--max_batch_size, --max_concurrent and --chunk_tokens must be >= 1 and --batch_wait_ms >= 0"
            )
        self.predictor, self.steps = predictor, predictor.engine
        self.steps.cache.ensure(max_batch_size, self.steps.n_prefix + max_context)
        self.max_batch_size, self.max_concurrent = max_batch_size, max_concurrent
        self.chunk_tokens, self.batch_wait = chunk_tokens, batch_wait_ms / 1000.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._waiting: List[Job] = []
        self._active: List[Job] = []
        self._ids = itertools.count(1)
        self._stopping = False
        self.stats = {
            "requests": 0,
            "finished": 0,
            "cancelled": 0,
            "rejected_busy": 0,
            "program_calls": 0,
            "tokens_generated": 0,
            "max_batch_size_seen": 0,
            "busy_seconds": 0.0,
        }
        self.batch_sizes: Counter = Counter()
        self._thread = threading.Thread(target=self._run, name="paddlebloom-scheduler", daemon=True)
        self._thread.start()

    # ---- the HTTP side
    def submit(self, prompt: List[int], sampling: GenerationConfig, seeded: bool = False) -> Job:
        return self.submit_many([(prompt, sampling, seeded)])[0]

    def submit_many(self, requests: List[Tuple[List[int], GenerationConfig, bool]]) -> List[Job]:
        """Queue the choices of one request together (all or none: a request never half-runs).
        They share one signal, so the handler waits on all of them at once."""
        jobs, signal = [], threading.Semaphore(0)
        for prompt, sampling, seeded in requests:
            sampling = self.predictor.settings(sampling)
            sampling.validate()
            if not prompt:
                raise ValueError("empty prompt: nothing to generate from")
            jobs.append(Job(list(prompt), sampling, seeded, signal=signal))
        with self._lock:
            if self._stopping:
                raise ServerBusy("the server is shutting down")
            if len(self._waiting) + len(self._active) + len(jobs) > self.max_concurrent:
                self.stats["rejected_busy"] += 1
                raise ServerBusy(f"all {self.max_concurrent} generation slots are busy; retry later")
            for job in jobs:
                job.id = next(self._ids)
                self._waiting.append(job)
            self.stats["requests"] += 1
            self._arrived.notify()
        return jobs

    def snapshot(self) -> Dict:
        with self._lock:
            return {
                **self.stats,
                "active": len(self._active),
                "waiting": len(self._waiting),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_size": self.max_batch_size,
                "max_concurrent": self.max_concurrent,
                "chunk_tokens": self.chunk_tokens,
                "free_slots": self.steps.cache.free_slots(),
            }

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._arrived.notify()
        self._thread.join(timeout=30)

    # ---- the scheduler thread
    def _wait_for_work(self) -> bool:
        """When idle, block for a request and give others a short window to share its prefill.
        False when stopping."""
        with self._lock:
            if not self._active:
                while not self._waiting and not self._stopping:
                    self._arrived.wait()
                deadline = time.monotonic() + self.batch_wait
                while len(self._waiting) < self.max_batch_size and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            return not self._stopping

    def _admit(self) -> List[Job]:
        """Waiting jobs that get a slot now, oldest first."""
        joining = []
        with self._lock:
            while self._waiting and len(self._active) < self.max_batch_size:
                job = self._waiting.pop(0)
                self._active.append(job)
                joining.append(job)
        for job in list(joining):
            seed = job.sampling.seed if job.seeded else random.randrange(2**31)
            try:
                job.sequence = self.steps.start(job.prompt, job.sampling, seed)
            except ValueError as e:  # longer than the cache: this request's fault, nobody else's
                joining.remove(job)
                self._finish(job, "error", str(e))
        return joining

    def _run(self) -> None:
        while self._wait_for_work():
            for job in [j for j in self._active if j.cancelled.is_set()]:
                self._finish(job, "cancelled")
            running = [j for j in self._active if j.sequence is not None]
            joining = self._admit()
            steps = self.steps
            for batch, logits_of, pick in (
                (joining, steps.prefill_logits, steps.first_token),
                (running, steps.decode_logits, steps.choose),
            ):
                if not batch:
                    continue
                try:
                    began = time.perf_counter()
                    rows = logits_of([j.sequence for j in batch])
                    self._account(len(batch), time.perf_counter() - began)
                except Exception as e:  # noqa: BLE001 - a failed call must fail its requests, not the server
                    for job in batch:
                        self._finish(job, "error", _failure(e))
                    continue
                for job, row in zip(batch, rows):
                    try:
                        token = pick(job.sequence, row)
                    except Exception as e:  # noqa: BLE001 - one request's settings failing must not fail its batch
                        self._finish(job, "error", _failure(e))
                        continue
                    self._deliver(job, token)
        with self._lock:
            leftovers = self._active + self._waiting
            self._active, self._waiting = [], []
        for job in leftovers:
            if job.sequence is not None:
                self.steps.release(job.sequence)
            job.put(("done", "error", "the server is shutting down"))

    def _account(self, batch: int, seconds: float) -> None:
        with self._lock:
            self.stats["busy_seconds"] += seconds
            self.stats["program_calls"] += 1
            self.stats["max_batch_size_seen"] = max(self.stats["max_batch_size_seen"], batch)
            self.batch_sizes[batch] += 1

    def _deliver(self, job: Job, token: Optional[int]) -> None:
        seq = job.sequence
        if seq.prompt_logprobs and not job.prompt_logprobs:
            job.prompt_logprobs = seq.prompt_logprobs
        if token is None and len(seq.logprobs) > len(job.logprobs):
            # the answer ended on EOS: its log-probability goes out with the EOS id (no text; not counted in usage)
            job.logprobs.append(seq.logprobs[-1])
            job.unsent.append(seq.config.eos_token_id)
        if token is not None:
            if seq.logprobs:
                job.logprobs.append(seq.logprobs[-1])
            job.tokens.append(token)
            job.unsent.append(token)
            with self._lock:
                self.stats["tokens_generated"] += 1
        if job.unsent and (len(job.unsent) >= self.chunk_tokens or seq.finished or job.cancelled.is_set()):
            job.put(job.unsent)
            job.unsent, job.chunks = [], job.chunks + 1
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
        elif seq.finished:
            self._finish(job, seq.finish_reason)

    def _finish(self, job: Job, reason: str, message: str = "") -> None:
        if job.sequence is not None:
            self.steps.release(job.sequence)
            job.sequence = None
        with self._lock:
            if job in self._active:
                self._active.remove(job)
            self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        if job.unsent:
            job.put(job.unsent)
            job.unsent = []
        job.finish_reason = reason
        job.put(("done", reason, message))


def _failure(e: Exception) -> str:
    return f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
