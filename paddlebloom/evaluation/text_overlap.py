"""ROUGE-1, ROUGE-2 and ROUGE-L of generated answers against references, as PaddleNLP's BLOOM
example reports them with `--do_generation` (paddlenlp.metrics Rouge1/Rouge2/RougeL given the
decoded strings, so the units are characters: the usual choice for Chinese).

- ROUGE-N: over the whole set, distinct n-grams of each answer found among its reference's
  distinct n-grams, divided by the references' distinct n-grams (a recall).
- ROUGE-L: per answer, the F-measure of the longest common subsequence with recall weighted by
  gamma = 1.2, averaged over answers.
"""

from typing import Dict, Sequence


def _ngrams(units: Sequence, n: int) -> set:
    return {tuple(units[i : i + n]) for i in range(len(units) - n + 1)}


def rouge_n(predictions: Sequence[str], references: Sequence[str], n: int) -> float:
    overlap = reference_count = 0
    for pred, ref in zip(predictions, references):
        ref_grams = _ngrams(ref, n)
        reference_count += len(ref_grams)
        overlap += len(_ngrams(pred, n) & ref_grams)
    return overlap / reference_count if reference_count else 0.0


def lcs_length(a: Sequence, b: Sequence) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str], gamma: float = 1.2) -> float:
    scores = []
    for pred, ref in zip(predictions, references):
        common = lcs_length(pred, ref)
        precision = common / len(pred) if pred else 0.0
        recall = common / len(ref) if ref else 0.0
        scores.append(
            (1 + gamma**2) * precision * recall / (recall + gamma**2 * precision) if precision and recall else 0.0
        )
    return sum(scores) / len(scores) if scores else 0.0


def overlap_scores(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return {
        "rouge1": rouge_n(predictions, references, 1),
        "rouge2": rouge_n(predictions, references, 2),
        "rougel": rouge_l(predictions, references),
    }
