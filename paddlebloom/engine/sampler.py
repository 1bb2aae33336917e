"""Choosing the next token from one row of logits, on the host, per request.

The step program returns logits and the engine decides here, row by row, so every request in a
running batch keeps its own settings and its own random stream: a seeded request's answer is a
function of (prompt, settings, seed) whichever batch it runs in, in the eager decoder and in the
exported program alike (both call this code).

Semantics: the repetition penalty is CTRL's / Hugging Face's (seen tokens' positive logits
divided, negative multiplied; seen = prompt and output), then OpenAI's presence and frequency
penalties (subtracted; counted over the output only); greedy takes the argmax after them;
sampling applies temperature, then top-k, then top-p (the smallest set of most likely tokens
whose mass reaches top_p), and draws by inverse CDF over the vocabulary order with one uniform
number from a Park-Miller generator (int64 multiply and modulo: the same draws on every machine).
"""

from typing import Iterable, List, Mapping, Tuple

import numpy as np

_MODULUS, _MULTIPLIER = 2147483647, 48271
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class RowGenerator:
    """One request's uniform numbers in (0, 1), from its seed."""

    def __init__(self, seed: int):
        self.state = (int(seed) % (_MODULUS - 1) * 7919 + 1) % (_MODULUS - 1) + 1
        for _ in range(3):  # warm-up draws decorrelate neighbouring seeds
            self.uniform()

    def uniform(self) -> float:
        self.state = (self.state * _MULTIPLIER) % _MODULUS
        return self.state / float(_MODULUS)


def penalise(logits: np.ndarray, seen: Iterable[int], penalty: float) -> np.ndarray:
    """A copy of one row [vocab] with the repetition penalty applied to the seen tokens."""
    logits = logits.astype(np.float32, copy=True)
    if penalty != 1.0:
        ids = np.fromiter(seen, dtype=np.int64)
        if ids.size:
            picked = logits[ids]
            with np.errstate(over="ignore", divide="ignore"):
                penalised = np.where(picked > 0, picked / penalty, picked * penalty)
            # Kept finite: a tiny penalty (a request may send 1e-300) divided logits to inf, and
            # inf - inf gave NaN probabilities that top-p found no token in (a 500 for the batch).
            logits[ids] = np.clip(penalised, -_FLOAT32_MAX, _FLOAT32_MAX)
    return logits


def penalise_counts(logits: np.ndarray, counts: Mapping[int, int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI's presence and frequency penalties (in place on a penalised copy): logit[j] -=
    counts[j] * frequency + (counts[j] > 0) * presence, counts over the tokens generated so far."""
    if (presence or frequency) and counts:
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        logits[ids] -= times * frequency + presence
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def safe_log(probs: np.ndarray) -> np.ndarray:
    """log of a distribution; tokens a filter removed get -inf (without a warning)."""
    with np.errstate(divide="ignore"):
        return np.log(probs)


def token_logprob(logp: np.ndarray, token: int, top: int) -> Tuple[float, List[Tuple[int, float]]]:
    """(log p of `token`, the `top` most likely tokens with theirs, most likely first). Tokens a
    top-k/top-p filter removed are never listed (their log p is -inf), so fewer may come back."""
    alternatives: List[Tuple[int, float]] = []
    if top > 0:
        best = np.argpartition(-logp, top - 1)[:top] if top < logp.size else np.arange(logp.size)
        best = best[np.argsort(-logp[best], kind="stable")]
        alternatives = [(int(t), float(logp[t])) for t in best if np.isfinite(logp[t])]
    return float(logp[token]), alternatives


def _top_p_keep(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest most-likely set whose mass reaches top_p.

    Exact, without sorting the whole vocabulary: sort the m largest, and if they already reach
    top_p the rest cannot be needed (they are all smaller); else double m.
    """
    m = min(256, probs.size)
    while True:
        top = np.argpartition(-probs, m - 1)[:m] if m < probs.size else np.arange(probs.size)
        top = top[np.argsort(-probs[top], kind="stable")]
        before = np.cumsum(probs[top]) - probs[top]  # mass strictly above each token
        keep = top[before < top_p]
        if keep.size < top.size or m == probs.size:
            smallest = probs[keep].min()
            return np.nonzero(probs >= smallest)[0]  # ties with the smallest kept are kept too
        m = min(2 * m, probs.size)


def sampling_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution a token is drawn from: tempered, top-k then top-p filtered, renormalised."""
    scaled = logits.astype(np.float64) / max(temperature, 1e-6)
    if 0 < top_k < scaled.size:
        threshold = np.partition(scaled, scaled.size - top_k)[scaled.size - top_k]
        scaled = np.where(scaled < threshold, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        keep = _top_p_keep(probs, top_p)
        filtered = np.zeros_like(probs)
        filtered[keep] = probs[keep]
        probs = filtered / filtered.sum()
    return probs


def draw(probs: np.ndarray, uniform: float) -> int:
    """Inverse-CDF draw over the vocabulary order."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, uniform * cdf[-1], side="right"), probs.size - 1))
