"""Training-data formats and prompt templates.

Every format becomes a list of turns (query, response); plain text becomes one turn with no
query. A template turns a query into prompt text; the response follows it and ends with EOS.

Formats (detected per record, or forced with --data_format):
  conversations  {"id", "conversations": [{"from": "human"|"assistant", "value"}, ...]}   (BELLE)
  alpaca         {"instruction", "input", "output"}
  belle          {"instruction", "output"}
  src_tgt        {"src": str|[str], "tgt": str|[str]}   (lists: multi-turn)
  text           {"text"}  or lines of a .txt file: continued pre-training, loss on all tokens
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .readers import DataError

FORMATS = ("conversations", "alpaca", "belle", "src_tgt", "text")
Turn = Tuple[Optional[str], str]  # (query or None for plain text, response)


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str  # contains {q}

    def render(self, query: str) -> str:
        return self.prompt.format(q=query)


TEMPLATES = {
    # BELLE / bloom_tuning's template.
    "belle": Template("belle", "Human: \n{q}\n\nAssistant: \n"),
    # Stanford Alpaca's instruction template.
    "alpaca": Template("alpaca", "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{q}\n\n### Response:\n"),
    # PaddleNLP's BLOOM example: the source text as it is, the target right after it.
    "plain": Template("plain", "{q}"),
}
DEFAULT_TEMPLATE = TEMPLATES["belle"]


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown --template {name!r}; choose from {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def detect_format(record: dict) -> Optional[str]:
    if "conversations" in record:
        return "conversations"
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


def to_turns(record: dict, fmt: Optional[str] = None, where: str = "record") -> List[Turn]:
    """The record as (query, response) turns; raises DataError naming `where` and the field."""
    fmt = fmt or detect_format(record)
    if fmt is None:
        raise DataError(f"{where}: unknown format (fields {sorted(record)}); expected one of {', '.join(FORMATS)}")
    if fmt == "text":
        return [(None, _string(record, "text", where))]
    if fmt == "alpaca":
        return [(_query(_string(record, "instruction", where), _string(record, "input", where, True)), _string(record, "output", where, True))]
    if fmt == "belle":
        return [(_string(record, "instruction", where), _string(record, "output", where, True))]
    if fmt == "src_tgt":
        src, tgt = record.get("src"), record.get("tgt")
        if src is None or tgt is None:
            raise DataError(f"{where}: missing field '{'src' if src is None else 'tgt'}'")
        if isinstance(src, str) and isinstance(tgt, str):
            return [(src, tgt)]
        if isinstance(src, list) and isinstance(tgt, list) and len(src) == len(tgt) and src:
            if not all(isinstance(x, str) for x in src + tgt):
                raise DataError(f"{where}: field 'src'/'tgt' lists must hold strings")
            return list(zip(src, tgt))
        raise DataError(f"{where}: field 'src'/'tgt' must both be strings or equally long non-empty lists")
    if fmt == "conversations":
        conv = record.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: field 'conversations' must be a non-empty list")
        turns, pending = [], None
        for i, msg in enumerate(conv):
            speaker = msg.get("from") if isinstance(msg, dict) else None
            if speaker not in ("human", "assistant") or not isinstance(msg.get("value"), str):
                raise DataError(f"{where}: field 'conversations[{i}]' needs 'from' human|assistant and a string 'value'")
            if speaker == "human":
                if pending is not None:
                    raise DataError(f"{where}: field 'conversations[{i}]': two human turns in a row")
                pending = msg["value"]
            else:
                if pending is None:
                    raise DataError(f"{where}: field 'conversations[{i}]': assistant turn without a human turn before it")
                turns.append((pending, msg["value"]))
                pending = None
        if not turns:
            raise DataError(f"{where}: field 'conversations' has no assistant turn")
        return turns
    raise DataError(f"{where}: unknown --data_format {fmt!r}; choose from {', '.join(FORMATS)}")


def prompt_for_prediction(record: dict, template: Template = DEFAULT_TEMPLATE, fmt: Optional[str] = None, where: str = "record", eos: str = "</s>") -> str:
    """The prompt to generate from: earlier turns with their answers, then the last query."""
    if "question" in record and detect_format(record) is None:  # BELLE eval set {question, std_answer, class}
        return template.render(_string(record, "question", where))
    fmt = fmt or detect_format(record)
    if fmt == "conversations" and isinstance(record.get("conversations"), list):
        conv = record["conversations"]
        # A conversation that ends with a human turn is a request for the next answer.
        if conv and isinstance(conv[-1], dict) and conv[-1].get("from") == "human":
            head = to_turns({"conversations": conv[:-1]}, fmt, where) if len(conv) > 1 else []
            return "".join(template.render(q) + a + eos for q, a in head) + template.render(_string(conv[-1], "value", where))
    # The answer of the last turn is what gets predicted: records without it are fine here.
    if fmt in ("alpaca", "belle"):
        extra = _string(record, "input", where, True) if fmt == "alpaca" else ""
        return template.render(_query(_string(record, "instruction", where), extra))
    if fmt == "src_tgt" and "src" in record:
        src, tgt = record["src"], record.get("tgt", [] if isinstance(record["src"], list) else "")
        if isinstance(src, str):
            return template.render(src)
        if isinstance(src, list) and src and isinstance(tgt, list) and len(tgt) >= len(src) - 1:
            head = to_turns({"src": src[:-1], "tgt": tgt[: len(src) - 1]}, fmt, where) if len(src) > 1 else []
            return "".join(template.render(q) + a + eos for q, a in head) + template.render(_string({"src": src[-1]}, "src", where))
    turns = to_turns(record, fmt, where)
    if turns[-1][0] is None:
        return turns[-1][1]
    return "".join(template.render(q) + a + eos for q, a in turns[:-1]) + template.render(turns[-1][0])
