"""Turns → (input_ids, labels): shifted, prompts masked, truncated the way users expect.

- labels are shifted here (labels[t] = ids[t + 1]) because BLOOM does not shift inside the model
  (STACK.md defect 2); prompt positions are -100 so only responses are learned.
- a single turn: the source keeps its last `src_length` tokens (the question's end matters
  most), the target its first `tgt_length` (EOS kept when the target fits).
- several turns: the earliest turns are dropped first until src_length + tgt_length fits; the
  last remaining turn is then truncated as a single turn.
- plain text: loss on every token, EOS appended, cut at src_length + tgt_length.
"""
from typing import List, Sequence, Tuple

import numpy as np

from .formats import Template, Turn

IGNORE = -100


def _pieces(turns: Sequence[Turn], tokenizer, template: Template) -> List[Tuple[List[int], List[int]]]:
    eos = tokenizer.eos_token_id
    if turns[0][0] is None:  # plain text
        return [([], tokenizer.encode(turns[0][1]) + [eos])]
    prompts = tokenizer.encode_batch([template.render(q) for q, _ in turns])
    answers = tokenizer.encode_batch([a for _, a in turns])
    return [(p, a + [eos]) for p, a in zip(prompts, answers)]


def encode_turns(turns: Sequence[Turn], tokenizer, template: Template, src_length: int, tgt_length: int):
    """Return (input_ids, labels) as int32 arrays of equal length."""
    pieces = _pieces(turns, tokenizer, template)
    budget = src_length + tgt_length
    while len(pieces) > 1 and sum(len(p) + len(a) for p, a in pieces) > budget:
        pieces.pop(0)
    if len(pieces) == 1:
        prompt, answer = pieces[0]
        if prompt:
            prompt, answer = prompt[-src_length:], answer[:tgt_length]
        else:
            answer = answer[:budget]
        pieces = [(prompt, answer)]
    ids, scored = [], []
    for prompt, answer in pieces:
        ids += prompt + answer
        scored += [False] * len(prompt) + [True] * len(answer)
    ids = np.asarray(ids, dtype=np.int32)
    labels = np.where(np.asarray(scored[1:], dtype=bool), ids[1:], IGNORE).astype(np.int32)
    return ids[:-1], labels


def template_overhead(tokenizer, template: Template) -> int:
    """Tokens the template adds around an empty query (a src_length below this cannot work)."""
    return len(tokenizer.encode(template.render("")))
