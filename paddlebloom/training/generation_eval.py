"""--do_generation: every evaluation also answers the validation prompts and scores the answers.

As PaddleNLP's BLOOM example: greedy decoding of at most --tgt_length new tokens (at least
--min_tgt_length: EOS is held back until then), ROUGE-1/2/L of the decoded answers against the
references. Prompts and references come from the encoded validation examples themselves (the
prompt up to the last answer, the last answer), so they are exactly what the evaluation loss
scores, truncation included. The answers of the latest evaluation are written to
OUTPUT_DIR/eval_generations.jsonl.
"""

import json
import os
from typing import List, Optional, Tuple

import numpy as np

from ..atomic import write_file_atomic
from ..data.encode import IGNORE
from ..engine import GenerationConfig
from ..evaluation.text_overlap import overlap_scores
from ..generation import forget_step_engine, generate_ids
from ..runtime import parallel_context
from .objective import TokenObjective

GENERATIONS_FILE = "eval_generations.jsonl"


def last_answer(ids: np.ndarray, labels: np.ndarray, eos_token_id: int) -> Optional[Tuple[List[int], List[int]]]:
    """(prompt ids, reference ids) of an encoded example: the context before its last scored run
    of labels, and that run without EOS. None for plain text (nothing before the answer)."""
    scored = np.nonzero(labels != IGNORE)[0]
    if scored.size == 0:
        return None
    start = int(scored[-1])
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    if start == 0:
        return None
    reference = [int(t) for t in labels[start : int(scored[-1]) + 1]]
    if reference and reference[-1] == eos_token_id:
        reference = reference[:-1]
    return [int(t) for t in ids[: start + 1]], reference  # labels[start] is ids[start + 1]: the prompt ends at start


class GenerationEval(TokenObjective):
    """Supervised fine-tuning whose evaluations also generate (the loss is TokenObjective's)."""

    def __init__(self, args):
        self.args, self.tokenizer = args, None

    def load(self, files, tokenizer, template, args, show_progress: bool):
        self.tokenizer = tokenizer
        return super().load(files, tokenizer, template, args, show_progress)

    def evaluate(self, model, examples, batch_size: int, pad_token_id: int) -> dict:
        result = super().evaluate(model, examples, batch_size, pad_token_id)
        pairs = [
            p
            for p in (last_answer(ids, labels, self.tokenizer.eos_token_id) for ids, labels in examples)
            if p is not None
        ]
        if not pairs:
            raise ValueError("--do_generation: the validation data has no prompts to answer (plain text only)")
        config = GenerationConfig(
            max_new_tokens=self.args.tgt_length,
            min_new_tokens=self.args.min_tgt_length,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=pad_token_id,
        )
        model.eval()
        forget_step_engine(model)  # a prefix being trained has changed since the last evaluation
        answers = []
        for start in range(0, len(pairs), batch_size):
            answers += generate_ids(model, [prompt for prompt, _ in pairs[start : start + batch_size]], config)
        model.train()
        predictions = [self.tokenizer.decode(a) for a in answers]
        references = [self.tokenizer.decode(r) for _, r in pairs]
        scores = overlap_scores(predictions, references)
        if parallel_context().is_main:
            self._write(predictions, references, answers)
        return {**result, **{f"eval_{k}": v for k, v in scores.items()}, "eval_generated": len(pairs)}

    def describe(self, result: dict) -> str:
        return super().describe(result) + "".join(
            f" {k} {result['eval_' + k]:.4f}" for k in ("rouge1", "rouge2", "rougel")
        )

    def _write(self, predictions, references, answers) -> None:
        os.makedirs(self.args.output_dir, exist_ok=True)

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                for pred, ref, ids in zip(predictions, references, answers):
                    f.write(
                        json.dumps({"prediction": pred, "reference": ref, "new_tokens": len(ids)}, ensure_ascii=False)
                        + "\n"
                    )

        write_file_atomic(os.path.join(self.args.output_dir, GENERATIONS_FILE), write)
