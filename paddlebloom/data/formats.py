"""Training-data formats: every record becomes a Dialogue (system prompt + (query, response) turns).

Formats (detected per record, or forced with --data_format):
  conversations  {"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value"}, ...], "system"?}
                 (BELLE, ShareGPT / LLaMA-Factory `sharegpt`)
  messages       {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}   (OpenAI chat)
  alpaca         {"instruction", "input", "output", "history"?: [[query, answer], ...], "system"?}
  belle          {"instruction", "output"} (+ the same optional history and system)
  src_tgt        {"src": str|[str], "tgt": str|[str]}   (lists: multi-turn)
  text           {"text"}  or lines of a .txt file: continued pre-training, loss on all tokens

System messages may only open a conversation (before the first user message); several are joined
with a blank line, after the record's own `system` field. Plain text is one turn with no query.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .readers import DataError
from .templates import DEFAULT_TEMPLATE, Template

FORMATS = ("conversations", "messages", "alpaca", "belle", "src_tgt", "text")
Turn = Tuple[
    Optional[str], Optional[str]
]  # (query, or None for plain text; response, or None when it is to be predicted)
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}
# A message is {"from", "value"} (ShareGPT) or {"role", "content"} (OpenAI), in either list.
MESSAGE_KEYS = {"conversations": ("from", "value"), "messages": ("role", "content")}


@dataclass(frozen=True)
class Dialogue:
    turns: List[Turn]
    system: Optional[str] = None


def detect_format(record: dict) -> Optional[str]:
    if "conversations" in record:
        return "conversations"
    if "messages" in record:
        return "messages"
    if "src" in record or "tgt" in record:
        return "src_tgt"
    if "instruction" in record:
        return "alpaca" if "input" in record else "belle"
    if "text" in record:
        return "text"
    return None


def _string(record: dict, field: str, where: str, allow_empty: bool = False) -> str:
    if field not in record:
        raise DataError(f"{where}: missing field '{field}'")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def _query(instruction: str, extra: str) -> str:
    return instruction + ("\n" + extra if extra.strip() else "")


def _system_field(record: dict, where: str) -> List[str]:
    if record.get("system") is None:
        return []
    value = _string(record, "system", where, allow_empty=True)
    return [value] if value.strip() else []


def _join_system(parts: Sequence[str]) -> Optional[str]:
    return "\n\n".join(parts) if parts else None


def _content(value, field: str, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise DataError(f'{where}: field \'{field}\' must be a string or a list of text parts {{"type": "text", "text"}}')


def _messages(record: dict, key: str, where: str, answered: bool) -> Dialogue:
    """conversations / messages: system messages first, then user and assistant alternating."""
    conv = record.get(key)
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field '{key}' must be a non-empty list")
    system, turns, pending = _system_field(record, where), [], None
    for i, msg in enumerate(conv):
        field = f"{key}[{i}]"
        role_key, text_key = next(
            (k for k in MESSAGE_KEYS.values() if isinstance(msg, dict) and k[0] in msg), MESSAGE_KEYS[key]
        )
        speaker = msg.get(role_key) if isinstance(msg, dict) else None
        if speaker not in ROLES or text_key not in msg:
            raise DataError(
                f"{where}: field '{field}' needs '{role_key}' one of {'|'.join(ROLES)} and a string '{text_key}'"
            )
        text, role = _content(msg[text_key], f"{field}.{text_key}", where), ROLES[speaker]
        if role == SYSTEM:
            if turns or pending is not None:
                raise DataError(f"{where}: field '{field}': a system message must come before the first user message")
            system.append(text)
        elif role == USER:
            if pending is not None:
                raise DataError(f"{where}: field '{field}': two {speaker} turns in a row")
            pending = text
        else:
            if pending is None:
                raise DataError(f"{where}: field '{field}': {speaker} turn without a user turn before it")
            turns.append((pending, text))
            pending = None
    if pending is not None and not answered:
        turns.append((pending, None))  # a conversation ending with the user asks for the next answer
    if not turns:
        raise DataError(f"{where}: field '{key}' has no assistant turn")
    return Dialogue(turns, _join_system(system))


def _history(record: dict, where: str) -> List[Turn]:
    """LLaMA-Factory's alpaca `history`: [[query, answer], ...] before the instruction."""
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [query, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{where}: field 'history[{i}]' must be a [query, answer] pair of strings")
    return [(q, a) for q, a in history]


def _instruction(record: dict, fmt: str, where: str, answered: bool) -> Dialogue:
    extra = _string(record, "input", where, True) if fmt == "alpaca" or "input" in record else ""
    query = _query(_string(record, "instruction", where), extra)
    answer = _string(record, "output", where, True) if answered or "output" in record else None
    return Dialogue(_history(record, where) + [(query, answer)], _join_system(_system_field(record, where)))


def _src_tgt(record: dict, where: str, answered: bool) -> Dialogue:
    src, tgt = record.get("src"), record.get("tgt")
    if src is None or (tgt is None and answered):
        raise DataError(f"{where}: missing field '{'src' if src is None else 'tgt'}'")
    system = _join_system(_system_field(record, where))
    if isinstance(src, str) and (isinstance(tgt, str) or tgt is None):
        return Dialogue([(src, tgt)], system)
    if tgt is None:
        tgt = []
    # Predicting may leave out the last answer: one target fewer than sources.
    if (
        isinstance(src, list)
        and isinstance(tgt, list)
        and src
        and (len(src) == len(tgt) or (not answered and len(tgt) == len(src) - 1))
    ):
        if not all(isinstance(x, str) for x in src + tgt):
            raise DataError(f"{where}: field 'src'/'tgt' lists must hold strings")
        return Dialogue(list(zip(src, tgt + [None] * (len(src) - len(tgt)))), system)
    raise DataError(f"{where}: field 'src'/'tgt' must both be strings or equally long non-empty lists")


def to_dialogue(record: dict, fmt: Optional[str] = None, where: str = "record", answered: bool = True) -> Dialogue:
    """The record as a Dialogue; raises DataError naming `where` and the field.

    answered=False (prediction): the last turn's response may be missing; it comes back as None.
    """
    fmt = fmt or detect_format(record)
    if fmt is None:
        raise DataError(f"{where}: unknown format (fields {sorted(record)}); expected one of {', '.join(FORMATS)}")
    if fmt == "text":
        return Dialogue([(None, _string(record, "text", where))])
    if fmt in ("alpaca", "belle"):
        return _instruction(record, fmt, where, answered)
    if fmt == "src_tgt":
        return _src_tgt(record, where, answered)
    if fmt in ("conversations", "messages"):
        return _messages(record, fmt, where, answered)
    raise DataError(f"{where}: unknown --data_format {fmt!r}; choose from {', '.join(FORMATS)}")


def prompt_text(
    template: Template, history: Sequence[Turn], query: str, system: Optional[str] = None, eos: str = "</s>"
) -> str:
    """Prompt text for answering `query` after the answered `history`: the conversation opening,
    every earlier turn with its answer and EOS, then the query."""
    done = "".join(template.render(q, system, first=i == 0) + a + eos for i, (q, a) in enumerate(history))
    return done + template.render(query, system, first=not history)


def prompt_for_prediction(
    record: dict,
    template: Template = DEFAULT_TEMPLATE,
    fmt: Optional[str] = None,
    where: str = "record",
    eos: str = "</s>",
) -> str:
    """The prompt to generate from: the last turn's answer is what gets predicted (the record's
    own answer, when it has one, is the reference); plain text is continued."""
    if "question" in record and detect_format(record) is None:  # BELLE eval set {question, std_answer, class}
        return template.render(_string(record, "question", where))
    dialogue = to_dialogue(record, fmt, where, answered=False)
    query, answer = dialogue.turns[-1]
    if query is None:
        return answer
    return prompt_text(template, dialogue.turns[:-1], query, dialogue.system, eos)
