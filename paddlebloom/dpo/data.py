"""Preference records → (prompt, chosen, rejected) → token pairs, through the fine-tuning formats.

Formats (detected per record, or forced with --data_format):
  trl         {"prompt", "chosen", "rejected"}: strings (TRL, LLaMA-Factory), or TRL's conversational
              form: "prompt" a message list ending with the user, "chosen"/"rejected" the answering
              assistant message (a one-message list or a message); "system" optional
  alpaca      {"instruction", "input"?, "chosen", "rejected", "history"?, "system"?}   (LLaMA-Factory)
  sharegpt    {"conversations" | "messages": [... ending with the user], "chosen", "rejected", "system"?}
              (LLaMA-Factory's sharegpt preference form; chosen/rejected are messages or strings)
  paddlenlp   {"src": str|[str], "tgt": str|[str], "response": [a, b], "sort"?: [x, y]}   (PaddleNLP's
              llm/alignment/dpo: tgt holds the earlier answers, one fewer than src; the answer with the
              larger sort value is chosen; without "sort" the first response is)

The prompt side (system prompt, earlier turns, the last query) is parsed by the fine-tuning
reader (data.formats.to_dialogue) and rendered by the same template, so a preference pair is
tokenised exactly as the fine-tuning example with that answer would be. Only the final answer is
scored; the earlier answers are context.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data.dataset import check_src_length, collate, iter_file_records
from ..data.encode import IGNORE, encode_turns
from ..data.formats import ASSISTANT, MESSAGE_KEYS, ROLES, Dialogue, to_dialogue
from ..data.readers import DataError
from ..data.templates import Template

PREFERENCE_FORMATS = ("trl", "alpaca", "sharegpt", "paddlenlp")
# (chosen input_ids, chosen labels, rejected input_ids, rejected labels): only the final answer scored
Pair = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Preference:
    dialogue: Dialogue  # the last turn is (query, None): the answer is what is compared
    chosen: str
    rejected: str


def detect_preference_format(record: dict) -> Optional[str]:
    if "response" in record:
        return "paddlenlp"
    if "conversations" in record or "messages" in record:
        return "sharegpt"
    if "prompt" in record:
        return "trl"
    if "instruction" in record:
        return "alpaca"
    return None


def _answer(record: dict, field: str, where: str) -> str:
    """An answer: a string, an assistant message, or a list holding one assistant message."""
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    value = record[field]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    for role_key, text_key in MESSAGE_KEYS.values():
        if isinstance(value, dict) and role_key in value:
            if ROLES.get(value[role_key]) == ASSISTANT and isinstance(value.get(text_key), str):
                return value[text_key]
    raise DataError(
        f'{where}: field \'{field}\' must be a string or one assistant message ({{"role": "assistant", "content"}} or '
        f'{{"from": "gpt", "value"}})'
    )


def _asking(dialogue: Dialogue, field: str, where: str) -> Dialogue:
    if dialogue.turns[-1][1] is not None:
        raise DataError(
            f"{where}: field '{field}' must end with a user turn: the answers compared are 'chosen' and 'rejected'"
        )
    return dialogue


def _paddlenlp(record: dict, where: str) -> Tuple[Dialogue, str, str]:
    src, tgt = record.get("src"), record.get("tgt", [])
    as_list = lambda v: [v] if isinstance(v, str) else v  # noqa: E731
    if src is None:
        raise DataError(f"{where}: missing field 'src'")
    src, tgt = as_list(src), as_list(tgt)
    if not (isinstance(src, list) and isinstance(tgt, list) and src and len(tgt) == len(src) - 1):
        raise DataError(
            f"{where}: field 'tgt' must hold the earlier answers: one fewer than 'src' (the last answer is in "
            "'response')"
        )
    dialogue = to_dialogue({"src": src, "tgt": tgt, "system": record.get("system")}, "src_tgt", where, answered=False)
    response, order = record.get("response"), record.get("sort")
    if not (isinstance(response, list) and len(response) == 2 and all(isinstance(r, str) for r in response)):
        raise DataError(
            f"{where}: field 'response' must be a list of two answers [chosen, rejected] (or ordered by 'sort')"
        )
    if order is None:
        return dialogue, response[0], response[1]
    if not (
        isinstance(order, list)
        and len(order) == 2
        and all(isinstance(s, (int, float)) for s in order)
        and order[0] != order[1]
    ):
        raise DataError(f"{where}: field 'sort' must be two different numbers, one per response (the larger is chosen)")
    best = 0 if order[0] > order[1] else 1
    return dialogue, response[best], response[1 - best]


def to_preference(record: dict, fmt: Optional[str] = None, where: str = "record") -> Preference:
    """The record as a Preference; raises DataError naming `where` and the field."""
    fmt = fmt or detect_preference_format(record)
    if fmt == "paddlenlp":
        dialogue, chosen, rejected = _paddlenlp(record, where)
        return Preference(dialogue, chosen, rejected)
    if fmt == "trl":
        prompt = record.get("prompt")
        if isinstance(prompt, list):  # conversational: the fine-tuning reader's messages
            dialogue = _asking(
                to_dialogue(
                    {"messages": prompt, "system": record.get("system")},
                    "messages",
                    f"{where}: field 'prompt'",
                    answered=False,
                ),
                "prompt",
                where,
            )
        elif isinstance(prompt, str):
            dialogue = to_dialogue({"src": prompt, "system": record.get("system")}, "src_tgt", where, answered=False)
        else:
            raise DataError(
                f"{where}: field 'prompt' must be a string or a list of messages"
                if "prompt" in record
                else f"{where}: missing field 'prompt'"
            )
    elif fmt == "alpaca":
        fields = {k: v for k, v in record.items() if k not in ("output", "chosen", "rejected")}
        dialogue = to_dialogue(fields, "alpaca" if "input" in fields else "belle", where, answered=False)
    elif fmt == "sharegpt":
        key = "conversations" if "conversations" in record else "messages"
        fields = {k: v for k, v in record.items() if k in (key, "system")}
        dialogue = _asking(to_dialogue(fields, key, where, answered=False), key, where)
    else:
        known = f"expected one of {', '.join(PREFERENCE_FORMATS)}"
        raise DataError(
            f"{where}: unknown preference format (fields {sorted(record)}); {known}"
            if fmt is None
            else f"{where}: unknown --data_format {fmt!r}; {known}"
        )
    return Preference(dialogue, _answer(record, "chosen", where), _answer(record, "rejected", where))


def _final_answer_only(ids: np.ndarray, labels: np.ndarray):
    """Keep the labels of the last answer (the trailing scored run); earlier answers become context."""
    ignored = np.flatnonzero(labels == IGNORE)
    labels = labels.copy()
    labels[: ignored[-1] + 1 if len(ignored) else 0] = IGNORE
    prompt_len = len(ids) + 1 - int((labels != IGNORE).sum())
    return ids, labels, prompt_len


def encode_preference(
    pref: Preference, tokenizer, template: Template, src_length: int, tgt_length: int, where: str = "record"
) -> Pair:
    """Both answers after the same prompt tokens, each truncated as in fine-tuning.

    Fine-tuning drops the oldest turns until a conversation fits, which depends on the answer's
    length; the two sequences keep the history that fits the longer answer, so both answers are
    scored after exactly the same prompt.
    """
    history, (query, _) = pref.dialogue.turns[:-1], pref.dialogue.turns[-1]
    for start in range(len(history) + 1):
        encoded = [
            _final_answer_only(
                *encode_turns(
                    history[start:] + [(query, answer)],
                    tokenizer,
                    template,
                    src_length,
                    tgt_length,
                    pref.dialogue.system,
                )
            )
            for answer in (pref.chosen, pref.rejected)
        ]
        (c_ids, c_labels, c_prompt), (r_ids, r_labels, r_prompt) = encoded
        if c_prompt == r_prompt and np.array_equal(c_ids[:c_prompt], r_ids[:r_prompt]):
            break
    if len(c_ids) == len(r_ids) and np.array_equal(c_ids, r_ids) and np.array_equal(c_labels, r_labels):
        raise DataError(f"{where}: fields 'chosen' and 'rejected' give the same tokens: nothing to prefer")
    return c_ids, c_labels, r_ids, r_labels


def load_preferences(
    paths: Sequence[str],
    tokenizer,
    template: Template,
    src_length: int,
    tgt_length: int,
    data_format: Optional[str] = None,
    show_progress: bool = True,
) -> List[Pair]:
    """Read and encode every preference record of every file."""
    check_src_length(tokenizer, template, src_length)
    return [
        encode_preference(to_preference(record, data_format, where), tokenizer, template, src_length, tgt_length, where)
        for path in paths
        for where, record in iter_file_records(path, show_progress)
    ]


def collate_pairs(pairs: Sequence[Pair], pad_token_id: int):
    """One right-padded batch: the chosen sequences of every pair, then the rejected ones."""
    return collate([(c, cl) for c, cl, _, _ in pairs] + [(r, rl) for _, _, r, rl in pairs], pad_token_id)
