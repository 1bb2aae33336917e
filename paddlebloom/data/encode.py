"""Turns → (input_ids, labels): shifted, prompts masked, truncated the way users expect.

- labels are shifted here (labels[t] = ids[t + 1]) because BLOOM does not shift inside the model
  (paddlenlp's BloomForCausalLM scores position t against token t); prompt positions are -100 so
  only responses are learned.
- a single turn: the source keeps its last `src_length` tokens (the question's end matters
  most), the target its first `tgt_length` (EOS kept when the target fits).
- several turns: the earliest turns are dropped first until src_length + tgt_length fits; the
  last remaining turn is then truncated as a single turn.
- plain text: loss on every token, EOS appended, cut at src_length + tgt_length.
- a system prompt (or the template's default opening) is part of the first kept turn's prompt:
  masked like every prompt, and kept when earlier turns are dropped.

`build_prompt` (the chat CLI and the serving API's chat endpoint) builds its prompts from the same
pieces, so a conversation is tokenised the same way when it is trained on and when it is continued.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .formats import Turn
from .templates import Template

IGNORE = -100
Piece = Tuple[List[int], List[int]]  # (prompt ids, answer ids + EOS; [] for the answer still to come)


def turn_pieces(turns: Sequence[Turn], tokenizer, template: Template, system: Optional[str] = None) -> List[Piece]:
    """Each turn's prompt and answer encoded on their own; the first prompt carries the opening."""
    eos = tokenizer.eos_token_id
    if turns[0][0] is None:  # plain text
        return [([], tokenizer.encode(turns[0][1]) + [eos])]
    prompts = tokenizer.encode_batch([template.render(q, system, first=i == 0) for i, (q, _) in enumerate(turns)])
    answers = tokenizer.encode_batch([a or "" for _, a in turns])
    return [(p, a + [eos] if answer is not None else []) for p, a, (_, answer) in zip(prompts, answers, turns)]


def drop_oldest_turns(
    pieces: List[Piece], turns: Sequence[Turn], tokenizer, template: Template, system: Optional[str], budget: int
) -> List[Piece]:
    """Drop the earliest turns until the pieces fit in `budget` tokens (the last one always stays);
    the turn that becomes the first is re-encoded with the conversation's opening."""
    pieces = list(pieces)
    while len(pieces) > 1 and sum(len(p) + len(a) for p, a in pieces) > budget:
        pieces.pop(0)
        query = turns[len(turns) - len(pieces)][0]
        pieces[0] = (tokenizer.encode(template.render(query, system)), pieces[0][1])
    return pieces


def encode_turns(
    turns: Sequence[Turn], tokenizer, template: Template, src_length: int, tgt_length: int, system: Optional[str] = None
):
    """Return (input_ids, labels) as int32 arrays of equal length."""
    budget = src_length + tgt_length
    pieces = drop_oldest_turns(
        turn_pieces(turns, tokenizer, template, system), turns, tokenizer, template, system, budget
    )
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


def build_prompt(
    tokenizer,
    template: Template,
    history: List[Tuple[str, str]],
    query: str,
    src_length: int,
    system: Optional[str] = None,
) -> List[int]:
    """Token ids of the system prompt + history + query, dropping the oldest turns until it fits
    (the system prompt stays with the first kept turn; the query alone is cut from the left as a
    last resort). The pieces are those of `encode_turns`, so the ids are exactly those of a
    multi-turn training example up to its last answer."""
    turns = list(history) + [(query, None)]
    pieces = drop_oldest_turns(
        turn_pieces(turns, tokenizer, template, system), turns, tokenizer, template, system, src_length
    )
    return [t for prompt, answer in pieces for t in prompt + answer][-src_length:]


def template_overhead(tokenizer, template: Template) -> int:
    """Tokens the template adds around an empty query (a src_length below this cannot work)."""
    return len(tokenizer.encode(template.render("")))
