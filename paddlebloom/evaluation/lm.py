"""Language-model scoring: perplexity over a sliding-window stream, LAMBADA cloze accuracy.

Every tensor-parallel rank runs the same batches (the model needs all of them for its
collectives) and ends with the same totals. With data-parallel ranks too (more processes than
the TP degree), batches are dealt round-robin over them and the totals summed at the end.
"""

import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from tqdm import tqdm

from ..data.readers import DataError, decode_utf8, iter_records
from ..runtime import parallel_context
from .wikitext import count_original_words, detokenize_wikitext
from .windows import Window, plan_windows


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}:0: file not found") from None
    text = decode_utf8(raw, path)
    if not text.strip():
        raise DataError(f"{path}:1: empty file")
    return text


@dataclass
class Stream:
    tokens: List[int]
    n_original_words: int
    detokenized: bool


def tokenize_stream(path: str, tokenizer, detokenize: bool) -> Stream:
    """The whole file as one token stream (tokenised once, so no boundary effects per line)."""
    raw = read_text(path)
    text = detokenize_wikitext(raw) if detokenize else raw
    return Stream(tokenizer.encode(text), count_original_words(raw), detokenize)


@dataclass(frozen=True)
class ClozeExample:
    line: int
    context: Tuple[int, ...]
    target: Tuple[int, ...]


def read_cloze(path: str, tokenizer, seq_length: int) -> List[ClozeExample]:
    """LAMBADA records {"text"}: context = all but the last whitespace-separated word; target =
    that word with a leading space, tokenised on its own. Long contexts keep their last tokens."""
    out = []
    for line, record in iter_records(path):
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{line}: field 'text' must be a string")
        words = text.split()
        if len(words) < 2:
            raise DataError(f"{path}:{line}: field 'text' needs at least two words (a context and a target)")
        word = words[-1]
        context = text[: text.rstrip().rfind(word)].rstrip()
        target = tokenizer.encode(" " + word)
        if len(target) >= seq_length:
            raise DataError(
                f"{path}:{line}: field 'text': target word has {len(target)} tokens, --seq_length {seq_length} leaves "
                "no context"
            )
        ctx = tokenizer.encode(context)[-(seq_length + 1 - len(target)) :]
        out.append(ClozeExample(line, tuple(ctx), tuple(target)))
    if not out:
        raise DataError(f"{path}:1: no records")
    return out


def _batches(items: Sequence, batch_size: int) -> List[Sequence]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _mine(batches: List) -> Iterable[int]:
    """Indices of the batches this process scores (round-robin over data-parallel ranks)."""
    ctx = parallel_context()
    return range(ctx.dp_rank, len(batches), ctx.dp_degree)


def _sum_over_dp(values: List[float]) -> List[float]:
    ctx = parallel_context()
    if ctx.dp_degree == 1:
        return values
    gathered = []
    dist.all_gather_object(gathered, values, group=ctx.dp_group)
    return [sum(float(g[i]) for g in gathered[: ctx.dp_degree]) for i in range(len(values))]


def _progress(total: int, desc: str, unit: str):
    return tqdm(total=total, desc=desc, unit=unit, disable=not parallel_context().is_main, dynamic_ncols=True)


@paddle.no_grad()
def score_stream(
    model, tokens: Sequence[int], windows: List[Window], batch_size: int, pad_id: int
) -> Tuple[float, int]:
    """(total NLL in nats, number of scored tokens) over the planned windows."""
    batches = _batches(windows, batch_size)
    nll, counted = 0.0, 0
    with _progress(sum(w.scored for w in windows), "perplexity", " tok") as bar:
        for b in _mine(batches):
            group = batches[b]
            width = max(w.length for w in group)
            ids = np.full((len(group), width), pad_id, dtype="int64")
            mask = np.zeros((len(group), width), dtype="int64")
            labels = np.full((len(group), width), -100, dtype="int64")
            for i, w in enumerate(group):
                ids[i, : w.length] = tokens[w.start : w.start + w.length]
                mask[i, : w.length] = 1
                labels[i, w.first_scored : w.length] = tokens[w.start + 1 + w.first_scored : w.start + 1 + w.length]
            out = model(
                paddle.to_tensor(ids),
                attention_mask=paddle.to_tensor(mask),
                labels=paddle.to_tensor(labels),
                return_logits=False,
            )
            n = int(out.n_tokens)
            nll += float(out.loss) * n
            counted += n
            bar.update(sum(w.scored for w in group) * parallel_context().dp_degree)
    nll, counted = _sum_over_dp([nll, counted])
    return nll, int(counted)


@paddle.no_grad()
def score_cloze(model, examples: List[ClozeExample], batch_size: int, pad_id: int) -> List[Tuple[bool, float]]:
    """Per example (greedy prediction reproduces every target token, target NLL in nats)."""
    batches = _batches(examples, batch_size)
    results = np.zeros((len(examples), 2), dtype="float64")
    with _progress(len(examples), "lambada", " ex") as bar:
        for b in _mine(batches):
            group = batches[b]
            seqs = [list(e.context) + list(e.target[:-1]) for e in group]
            width = max(len(s) for s in seqs)
            ids = np.full((len(group), width), pad_id, dtype="int64")
            mask = np.zeros((len(group), width), dtype="int64")
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = s
                mask[i, : len(s)] = 1
            logits = model(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask)).logits
            for i, e in enumerate(group):
                # Only the target positions: the full [seq, vocab] log-softmax is large for real vocabularies.
                first = len(e.context) - 1
                rows = logits[i, first : first + len(e.target)].astype("float32")
                logp = F.log_softmax(rows, axis=-1).numpy().astype("float64")
                target = np.asarray(e.target)
                correct = bool((logp.argmax(-1) == target).all())
                results[b * batch_size + i] = (float(correct), -logp[np.arange(len(target)), target].sum())
            bar.update(len(group) * parallel_context().dp_degree)
    flat = _sum_over_dp(results.reshape(-1).tolist())
    return [(bool(flat[2 * i] > 0.5), flat[2 * i + 1]) for i in range(len(examples))]


def perplexity_report(stream: Stream, nll: float, counted: int) -> dict:
    # Megatron's denominators: the first token and the first word are never predicted.
    avg = nll / counted
    words = max(1, stream.n_original_words - 1)
    return {
        "num_tokenized_tokens": len(stream.tokens),
        "num_scored_tokens": counted,
        "num_original_words": stream.n_original_words,
        "detokenized": stream.detokenized,
        "total_nll": nll,
        "avg_loss": avg,
        "ppl": math.exp(avg),
        "adjusted_ppl": math.exp(nll / words),
        "token_ratio": counted / words,
    }


def cloze_report(examples: List[ClozeExample], results: List[Tuple[bool, float]]) -> dict:
    n_correct = sum(1 for ok, _ in results if ok)
    nll = sum(v for _, v in results)
    n_target = sum(len(e.target) for e in examples)
    return {
        "num_examples": len(examples),
        "num_correct": n_correct,
        "accuracy": n_correct / len(examples),
        "num_target_tokens": n_target,
        "total_nll": nll,
        # lm-evaluation-harness's LAMBADA perplexity: per target word (its summed token NLL).
        "ppl": math.exp(nll / len(examples)),
        "token_ppl": math.exp(nll / n_target),
    }


def plan(stream: Stream, seq_length: int, stride: int) -> List[Window]:
    return plan_windows(len(stream.tokens), seq_length, stride)
