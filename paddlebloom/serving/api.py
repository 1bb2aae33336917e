"""OpenAI-compatible request checking for /v1/completions and /v1/chat/completions.

Checking is strict: a field this server does not know is an error (a typo such as `max_token`
would otherwise be silently ignored and the user would wonder why the answer is long).

Decoding: `temperature: 0` is greedy; a positive temperature, `top_p` < 1 or `top_k` > 0 ask for
sampling; with none of them the exported generation_config.json's defaults apply. `top_k` and
`repetition_penalty` are extensions (as in vLLM); `presence_penalty` / `frequency_penalty` are
OpenAI's. `seed` makes sampling reproducible (choice j of a request draws from seed + j).
Completions take the prompt as raw text, a list of texts, token ids, or a list of token-id lists
(one choice per prompt, `n` per prompt with index = prompt * n + j, as OpenAI numbers them);
chat messages are rendered in the fine-tuning template by paddlebloom.data.encode.build_prompt.
`logprobs` (completions: how many alternatives; chat: `logprobs: true` + `top_logprobs`) and
`echo` (completions: the prompt's own log-probabilities, `max_tokens` 0 allowed) run on the same
engine: scoring a prompt is its prefill.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..data.encode import build_prompt
from ..engine import GenerationConfig


class ApiError(Exception):
    """An error the client caused or must handle: HTTP status, OpenAI error type, one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> Dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stream",
    "stop",
    "n",
    "user",
    "stream_options",
    "max_completion_tokens",
    "logprobs",
}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "best_of"}
CHAT_FIELDS = COMMON | {"messages", "top_logprobs"}
ROLES = ("system", "user", "assistant")
MAX_STOP = 4  # as OpenAI
MAX_LOGPROBS = {"completion": 5, "chat": 20}  # OpenAI's bounds on alternatives per token


@dataclass
class Request:
    """A checked request: the prompts' token ids (one or more) and how to decode them."""

    prompts: List[List[int]]
    sampling: GenerationConfig
    seeded: bool
    stream: bool
    stop: List[str] = field(default_factory=list)
    include_usage: bool = False
    n: int = 1
    echo: bool = False
    logprobs: Optional[str] = None  # "completion" or "chat": the shape of the log-probabilities to return

    def jobs(self) -> List[Tuple[List[int], GenerationConfig, bool]]:
        """(prompt, settings, seeded) per choice, in OpenAI's order: prompt by prompt, n each."""
        return [
            (ids, dataclasses.replace(self.sampling, seed=self.sampling.seed + j), self.seeded)
            for ids in self.prompts
            for j in range(self.n)
        ]


@dataclass
class Limits:
    max_prompt_tokens: int
    max_new_tokens: int
    defaults: Dict  # generation_config.json of the exported model
    vocab_size: int = 0  # token ids in prompts must be below it (0: not checked)
    max_choices: int = 32  # prompts x n per request: what the server runs at once


def _typed(body: Dict, name: str, types, lo=None, hi=None, lo_open=False):
    if name not in body or body[name] is None:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ApiError(
            400,
            f"'{name}' must be {'an integer' if types is int else 'a number'}, got {type(value).__name__}",
            param=name,
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number, got {value}", param=name)
    if lo is not None and (value <= lo if lo_open else value < lo) or hi is not None and value > hi:
        bound = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        raise ApiError(
            400,
            f"'{name}' = {value} is out of range "
            f"({bound}{', ' if bound and hi is not None else ''}{f'<= {hi}' if hi is not None else ''})",
            param=name,
        )
    return value


def _check_fields(body, allowed: set) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400, f"unknown field '{unknown[0]}' (this server accepts: {', '.join(sorted(allowed))})", param=unknown[0]
        )


def _flag(body: Dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false", param=name)
    return value


def _logprobs(body: Dict, chat: bool) -> Optional[int]:
    """How many alternatives per token to return, or None for no log-probabilities."""
    kind = "chat" if chat else "completion"
    if chat:
        top = _typed(body, "top_logprobs", int, 0, MAX_LOGPROBS[kind])
        if not _flag(body, "logprobs"):
            if top is not None:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            return None
        return top or 0
    return _typed(body, "logprobs", int, 0, MAX_LOGPROBS[kind])


def _choices(body: Dict, prompts: int, limits: Limits) -> int:
    n = _typed(body, "n", int, 1, limits.max_choices)
    n = 1 if n is None else n
    best_of = _typed(body, "best_of", int, 1)
    if best_of is not None and best_of != n:
        raise ApiError(
            400,
            f"'best_of' {best_of} is not supported (no server-side ranking): ask for 'n' choices and rank them "
            "yourself",
            param="best_of",
        )
    if prompts * n > limits.max_choices:
        raise ApiError(
            400,
            f"{prompts} prompt(s) x n={n} is {prompts * n} answers; this server runs at most {limits.max_choices} at "
            "once",
            param="n",
        )
    return n


def _sampling(
    body: Dict, limits: Limits, logprobs: Optional[int] = None, echo: bool = False
) -> Tuple[GenerationConfig, bool]:
    d = limits.defaults
    least = 0 if echo else 1  # echo with max_tokens 0 scores the prompt only (how lm-evaluation-harness asks)
    max_tokens = _typed(body, "max_tokens", int, least, limits.max_new_tokens)
    newer = _typed(
        body, "max_completion_tokens", int, least, limits.max_new_tokens
    )  # OpenAI's newer name: checked even when both come
    max_tokens = max_tokens if max_tokens is not None else newer
    temperature = _typed(body, "temperature", (int, float), 0, 100)
    top_p = _typed(body, "top_p", (int, float), 0, 1, lo_open=True)
    top_k = _typed(body, "top_k", int, 0, 100000)
    penalty = _typed(body, "repetition_penalty", (int, float), 0, 100, lo_open=True)
    presence = _typed(body, "presence_penalty", (int, float), -2, 2)
    frequency = _typed(body, "frequency_penalty", (int, float), -2, 2)
    seed = _typed(body, "seed", int, 0, 2**62)
    asks_sampling = (temperature is not None and temperature > 0) or (top_p is not None and top_p < 1) or bool(top_k)
    if temperature == 0:
        strategy = "greedy_search"
    elif asks_sampling:
        strategy = "sampling"
    else:
        strategy = d.get("decode_strategy", "greedy_search")
    default_max = min(int(d.get("max_new_tokens", 64)), limits.max_new_tokens)
    sampling = GenerationConfig(
        decode_strategy=strategy,
        max_new_tokens=max_tokens if max_tokens is not None else default_max,
        top_k=top_k if top_k is not None else int(d.get("top_k", 0)),
        top_p=float(top_p) if top_p is not None else float(d.get("top_p", 1.0)),
        temperature=float(temperature) if temperature else float(d.get("temperature", 1.0)),
        repetition_penalty=float(penalty) if penalty is not None else float(d.get("repetition_penalty", 1.0)),
        presence_penalty=float(presence or 0.0),
        frequency_penalty=float(frequency or 0.0),
        seed=seed or 0,
        logprobs=logprobs,
        # echo puts the prompt in the answer; its log-probabilities come from scoring it (also with max_tokens 0)
        prompt_logprobs=(logprobs or 0) if echo and (logprobs is not None or max_tokens == 0) else None,
    )
    try:
        sampling.validate()
    except ValueError as e:
        raise ApiError(400, str(e).replace("--", "")) from None
    return sampling, seed is not None


def _stream_flags(body: Dict) -> Tuple[bool, List[str], bool]:
    stream = _flag(body, "stream")
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
        raise ApiError(
            400,
            f"{what} has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}",
            param="messages" if "message" in what else "prompt",
        )


def _prompts(prompt, tokenizer, limits: Limits) -> List[List[int]]:
    """OpenAI's four prompt forms -> token ids per prompt."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [tokenizer.encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [_token_ids(prompt, limits, "prompt")]
        if all(isinstance(p, list) for p in prompt):
            return [_token_ids(p, limits, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise ApiError(
        400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists", param="prompt"
    )


def _token_ids(ids: List, limits: Limits, where: str) -> List[int]:
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0 or (limits.vocab_size and t >= limits.vocab_size):
            raise ApiError(
                400,
                f"'{where}': token id {t!r} is not in this model's vocabulary [0, {limits.vocab_size})",
                param="prompt",
            )
    return list(ids)


def parse_completion(body, tokenizer, limits: Limits) -> Request:
    _check_fields(body, COMPLETION_FIELDS)
    prompts = _prompts(body.get("prompt"), tokenizer, limits)
    for i, ids in enumerate(prompts):
        _check_length(ids, limits, "'prompt'" if len(prompts) == 1 else f"'prompt[{i}]'")
    echo, logprobs = _flag(body, "echo"), _logprobs(body, chat=False)
    n = _choices(body, len(prompts), limits)
    sampling, seeded = _sampling(body, limits, logprobs, echo)
    stream, stop, include_usage = _stream_flags(body)
    return Request(
        prompts, sampling, seeded, stream, stop, include_usage, n, echo, None if logprobs is None else "completion"
    )


def chat_turns(messages) -> Tuple[Optional[str], List[Tuple[str, str]], str]:
    """(system prompt, history of (user, assistant) pairs, the last user message). System messages
    before the first user message are the conversation's system prompt (the template's system slot,
    as in training); a later one is put in front of the next user message."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    system, history, pending_system, query = None, [], [], None
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or set(m) - {"role", "content", "name"}
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise ApiError(
                400, f'messages[{i}] must be {{"role": one of {", ".join(ROLES)}, "content": string}}', param="messages"
            )
        role, content = m["role"], m["content"]
        if role == "system":
            pending_system.append(content)
        elif role == "user":
            if query is not None:
                raise ApiError(
                    400,
                    f"messages[{i}]: two user messages in a row (an assistant message must come between)",
                    param="messages",
                )
            if not history and system is None and pending_system:
                system, pending_system = "\n\n".join(pending_system), []
            query = "\n\n".join(pending_system + [content])
            pending_system = []
        else:
            if query is None:
                raise ApiError(400, f"messages[{i}]: an assistant message must answer a user message", param="messages")
            history.append((query, content))
            query = None
    if query is None:
        raise ApiError(400, "the last message must be the user's (the one to answer)", param="messages")
    return system, history, query


def parse_chat(body, tokenizer, template, limits: Limits) -> Request:
    _check_fields(body, CHAT_FIELDS)
    system, history, query = chat_turns(body.get("messages"))
    # The newest message must fit on its own (with the system prompt); older turns are dropped as in predict/chat.py.
    _check_length(tokenizer.encode(template.render(query, system)), limits, "the last message")
    ids = build_prompt(tokenizer, template, history, query, limits.max_prompt_tokens, system)
    logprobs = _logprobs(body, chat=True)
    n = _choices(body, 1, limits)
    sampling, seeded = _sampling(body, limits, logprobs)
    stream, stop, include_usage = _stream_flags(body)
    return Request([ids], sampling, seeded, stream, stop, include_usage, n, False, None if logprobs is None else "chat")
