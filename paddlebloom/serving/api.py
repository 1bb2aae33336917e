"""OpenAI-compatible request checking and response shapes for /v1/completions and /v1/chat/completions.

Checking is strict: a field this server does not know is an error (a typo such as `max_token`
would otherwise be silently ignored and the user would wonder why the answer is long).

Decoding: `temperature: 0` is greedy; a positive temperature, `top_p` < 1 or `top_k` > 0 ask for
sampling; with none of them the exported generation_config.json's defaults apply. `top_k` and
`repetition_penalty` are extensions (as in vLLM). `seed` makes sampling reproducible.
Completions take the prompt as raw text (as deploy/infer_generation.py does with stdin lines);
chat messages are rendered in the fine-tuning template by paddlebloom.chat.build_prompt.
"""
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..chat import build_prompt
from ..deploy.predictor import Sampling


class ApiError(Exception):
    """An error the client caused or must handle: HTTP status, OpenAI error type, one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> Dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stream", "stop", "n", "user",
          "stream_options", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}
CHAT_FIELDS = COMMON | {"messages"}
ROLES = ("system", "user", "assistant")
MAX_STOP = 4  # as OpenAI


@dataclass
class Request:
    """A checked request: the prompt's token ids and how to decode."""

    prompt_ids: List[int]
    sampling: Sampling
    seeded: bool
    stream: bool
    stop: List[str] = field(default_factory=list)
    include_usage: bool = False


@dataclass
class Limits:
    max_prompt_tokens: int
    max_new_tokens: int
    defaults: Dict  # generation_config.json of the exported model


def _typed(body: Dict, name: str, types, lo=None, hi=None, lo_open=False):
    if name not in body or body[name] is None:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {'an integer' if types is int else 'a number'}, got {type(value).__name__}", param=name)
    if lo is not None and (value <= lo if lo_open else value < lo) or hi is not None and value > hi:
        bound = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        raise ApiError(400, f"'{name}' = {value} is out of range ({bound}{', ' if bound and hi is not None else ''}{f'<= {hi}' if hi is not None else ''})", param=name)
    return value


def _check_fields(body, allowed: set) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field '{unknown[0]}' (this server accepts: {', '.join(sorted(allowed))})", param=unknown[0])


def _sampling(body: Dict, limits: Limits) -> Tuple[Sampling, bool]:
    d = limits.defaults
    max_tokens = _typed(body, "max_tokens", int, 1, limits.max_new_tokens)
    max_tokens = max_tokens if max_tokens is not None else _typed(body, "max_completion_tokens", int, 1, limits.max_new_tokens)
    temperature = _typed(body, "temperature", (int, float), 0, 100)
    top_p = _typed(body, "top_p", (int, float), 0, 1, lo_open=True)
    top_k = _typed(body, "top_k", int, 0, 100000)
    penalty = _typed(body, "repetition_penalty", (int, float), 0, 100, lo_open=True)
    seed = _typed(body, "seed", int, 0, 2 ** 62)
    n = _typed(body, "n", int)
    if n not in (None, 1):
        raise ApiError(400, "'n' must be 1 (send several requests for several answers)", param="n")
    asks_sampling = (temperature is not None and temperature > 0) or (top_p is not None and top_p < 1) or bool(top_k)
    if temperature == 0:
        strategy = "greedy_search"
    elif asks_sampling:
        strategy = "sampling"
    else:
        strategy = d.get("decode_strategy", "greedy_search")
    default_max = min(int(d.get("max_new_tokens", 64)), limits.max_new_tokens)
    sampling = Sampling(
        decode_strategy=strategy,
        max_new_tokens=max_tokens if max_tokens is not None else default_max,
        top_k=top_k if top_k is not None else int(d.get("top_k", 0)),
        top_p=float(top_p) if top_p is not None else float(d.get("top_p", 1.0)),
        temperature=float(temperature) if temperature else float(d.get("temperature", 1.0)),
        repetition_penalty=float(penalty) if penalty is not None else float(d.get("repetition_penalty", 1.0)),
        seed=seed or 0,
    )
    try:
        sampling.validate()
    except ValueError as e:
        raise ApiError(400, str(e).replace("--", "")) from None
    return sampling, seed is not None


def _stream_flags(body: Dict) -> Tuple[bool, List[str], bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", param="stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(400, "'stream_options' may only hold 'include_usage'", param="stream_options")
    return stream, stop, bool(options.get("include_usage", False))


def _check_length(ids: List[int], limits: Limits, what: str) -> None:
    if not ids:
        raise ApiError(400, f"{what} is empty: nothing to generate from")
    if len(ids) > limits.max_prompt_tokens:
        raise ApiError(400, f"{what} has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}", param="messages" if "message" in what else "prompt")


def parse_completion(body, tokenizer, limits: Limits) -> Request:
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
    ids = tokenizer.encode(prompt)
    _check_length(ids, limits, "'prompt'")
    sampling, seeded = _sampling(body, limits)
    stream, stop, include_usage = _stream_flags(body)
    return Request(ids, sampling, seeded, stream, stop, include_usage)


def chat_turns(messages) -> Tuple[List[Tuple[str, str]], str]:
    """(history of (user, assistant) pairs, the last user message). System messages are put in
    front of the next user message: the fine-tuning templates have no system slot."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    history, pending_system, query = [], [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, \"content\": string}}", param="messages")
        role, content = m["role"], m["content"]
        if role == "system":
            pending_system.append(content)
        elif role == "user":
            if query is not None:
                raise ApiError(400, f"messages[{i}]: two user messages in a row (an assistant message must come between)", param="messages")
            query = "\n\n".join(pending_system + [content])
            pending_system = []
        else:
            if query is None:
                raise ApiError(400, f"messages[{i}]: an assistant message must answer a user message", param="messages")
            history.append((query, content))
            query = None
    if query is None:
        raise ApiError(400, "the last message must be the user's (the one to answer)", param="messages")
    return history, query


def parse_chat(body, tokenizer, template, limits: Limits) -> Request:
    _check_fields(body, CHAT_FIELDS)
    history, query = chat_turns(body.get("messages"))
    # The newest message must fit on its own; older turns are dropped as in predict/chat.py.
    _check_length(tokenizer.encode(template.render(query)), limits, "the last message")
    ids = build_prompt(tokenizer, template, history, query, limits.max_prompt_tokens)
    sampling, seeded = _sampling(body, limits)
    stream, stop, include_usage = _stream_flags(body)
    return Request(ids, sampling, seeded, stream, stop, include_usage)


class TextStream:
    """Token ids in, text deltas out. Holds back the bytes of a character not yet complete and
    any tail that could still become a stop string; `stopped` once a stop string appears (the
    text ends before it, as OpenAI returns it)."""

    def __init__(self, tokenizer, stop: List[str]):
        self.tokenizer, self.stop, self.ids, self.sent, self.stopped = tokenizer, stop, [], "", False
        self.decoded, self.decoded_upto = "", 0  # text of ids[:decoded_upto], which ends on a whole character

    def _text(self) -> str:
        """All text so far, decoding only the ids since the last whole character: re-decoding every
        id per token made a 256-token answer cost O(n^2) tokenizer work on the server's threads.
        (Byte-level BPE: the text of a suffix of ids is the suffix of the text, at a character boundary.)"""
        tail = self.tokenizer.decode(self.ids[self.decoded_upto :])
        if tail.endswith("\ufffd"):
            return self.decoded + tail
        self.decoded, self.decoded_upto = self.decoded + tail, len(self.ids)
        return self.decoded

    def feed(self, new_ids: List[int]) -> str:
        self.ids.extend(new_ids)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._emit(text[:cut])
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._emit(text[: len(text) - hold])

    def finish(self) -> str:
        """The rest, at the end of generation (nothing more can complete a stop string)."""
        return "" if self.stopped else self._emit(self._text())

    def _emit(self, text: str) -> str:
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = self.sent + delta
        return delta


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> Dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: Optional[str], use: Optional[Dict]) -> Dict:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if use is not None:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, text: str, finish: Optional[str], use: Optional[Dict]) -> Dict:
    body = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
    if use is not None:
        body["usage"] = use
    return body


def chat_chunk(rid: str, model: str, delta: Dict, finish: Optional[str]) -> Dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
