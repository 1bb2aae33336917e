"""OpenAI response shapes: token ids in, completion / chat bodies and stream chunks out.

A `Choice` turns one answer's token ids into text deltas (holding back unfinished characters and
possible stop strings, TextStream) and, when asked, into OpenAI's log-probability objects:
  completions  {"tokens", "token_logprobs", "top_logprobs", "text_offset"} (with echo the prompt's
               tokens come first, the very first one with null: nothing predicts it);
  chat         {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
A token that holds part of a character is named by its bytes ("bytes:\\xe4\\xbd", as OpenAI does).
"""

import codecs
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple


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
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = self.sent + delta
        return delta


def token_name(tokenizer, token_id: int) -> str:
    raw = tokenizer.token_bytes(token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Choice:
    """One answer of a request: its text so far and, with `logprobs` ("completion" or "chat"),
    the log-probability entries of its tokens in that endpoint's shape."""

    def __init__(self, index: int, job, tokenizer, stop: List[str], logprobs: Optional[str], echo: bool):
        self.index, self.job, self.tokenizer, self.kind, self.echo = index, job, tokenizer, logprobs, echo
        self.stream = TextStream(tokenizer, stop)
        self.text, self.finish_reason, self.started = "", None, False
        # text_offset = whole characters before a token; an incremental decoder holds a split character's
        # bytes, so counting costs O(new bytes) per token (re-decoding everything was O(n^2) per answer)
        self._chars, self._utf8 = 0, codecs.getincrementaldecoder("utf-8")("ignore")
        self.entries: List = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def start(self) -> Tuple[str, Optional[Dict]]:
        """At the job's first event (its prompt has been prefilled): the echoed prompt, if asked."""
        self.started = True
        if not self.echo:
            return "", None
        prompt = self.job.prompt
        text = self.tokenizer.decode(prompt)
        self.text += text
        return text, self._entries(prompt, self.job.prompt_logprobs or [None] * len(prompt))

    def feed(self, ids: Sequence[int]) -> Tuple[str, Optional[Dict]]:
        """New tokens -> (text delta, their log-probability piece or None)."""
        first = len(self.stream.ids)
        piece = self._entries(ids, self.job.logprobs[first : first + len(ids)])
        delta = self.stream.feed(list(ids))
        self.text += delta
        if self.stream.stopped:
            self.job.cancel()  # a stop string ended this answer: free its slot
        return delta, piece

    def end(self, reason: Optional[str]) -> str:
        rest = self.stream.finish()
        self.text += rest
        self.finish_reason = "stop" if self.stream.stopped else reason
        return rest

    def _entries(self, ids: Sequence[int], scores) -> Optional[Dict]:
        if not self.kind:
            return None
        piece = []
        for token, score in zip(ids, scores):
            piece.append((token, score, self._chars))
            if not self.tokenizer.is_special(token):  # decode() drops special tokens from the text
                self._chars += len(self._utf8.decode(self.tokenizer.token_bytes(token)))
        self.entries.extend(piece)
        return self._shape(piece)

    def logprobs(self) -> Optional[Dict]:
        return self._shape(self.entries) if self.kind else None

    def _name(self, token: int) -> str:
        return token_name(self.tokenizer, token)

    def _shape(self, entries) -> Dict:
        if self.kind == "chat":

            def item(t, lp):
                return {"token": self._name(t), "logprob": lp, "bytes": list(self.tokenizer.token_bytes(t))}

            return {
                "content": [{**item(t, s[0]), "top_logprobs": [item(a, lp) for a, lp in s[1]]} for t, s, _ in entries],
                "refusal": None,
            }
        return {
            "tokens": [self._name(t) for t, _, _ in entries],
            "token_logprobs": [None if s is None else s[0] for _, s, _ in entries],
            "top_logprobs": [None if s is None else {self._name(a): lp for a, lp in s[1]} for _, s, _ in entries],
            "text_offset": [o for _, _, o in entries],
        }


class Answer:
    """A request's choices, driven by its jobs' events: `complete` builds the whole body, `chunks`
    yields the stream's chunks as they come."""

    def __init__(self, request, jobs, tokenizer, model: str, chat: bool):
        self.request, self.jobs, self.model, self.chat = request, jobs, model, chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.choices = [
            Choice(i, job, tokenizer, request.stop, request.logprobs, request.echo) for i, job in enumerate(jobs)
        ]

    def usage(self) -> Dict:
        return usage(sum(len(p) for p in self.request.prompts), sum(len(j.tokens) for j in self.jobs))

    def _advance(self, i: int, event) -> Optional[Tuple[str, Optional[Dict], Optional[str]]]:
        """Apply one event of choice i: (text delta, logprobs piece, finish reason or None), or None
        when there is nothing to send. A failed generation is a 500 for the whole request."""
        choice = self.choices[i]
        if choice.done:
            return None  # already ended by a stop string; later events are its cancellation
        text, piece = choice.start() if not choice.started else ("", None)
        if isinstance(event, tuple):
            if event[1] == "error":
                raise ServerFault(event[2])
            text += choice.end(event[1])
            return text, piece, choice.finish_reason
        delta, more = choice.feed(event)
        piece = _merge(piece, more)
        if choice.stream.stopped:
            text += delta + choice.end("stop")
            return text, piece, choice.finish_reason
        return text + delta, piece, None

    def complete(self, events) -> Dict:
        for i, event in events:
            self._advance(i, event)
            if all(c.done for c in self.choices):
                break
        make = chat_choice if self.chat else completion_choice
        return body(
            self.id,
            self.model,
            self.chat,
            [make(c.index, c.text, c.finish_reason, c.logprobs()) for c in self.choices],
            self.usage(),
        )

    def chunks(self, events):
        if self.chat:
            yield self._chunk([chat_delta(c.index, {"role": "assistant", "content": ""}, None) for c in self.choices])
        for i, event in events:
            step = self._advance(i, event)
            if step is None:
                continue
            text, piece, finish = step
            if text or piece:
                yield self._chunk([self._piece(i, text, None, piece)])
            if finish is not None:
                yield self._chunk([self._piece(i, "", finish, None)])
            if all(c.done for c in self.choices):
                break
        if self.request.include_usage:
            yield self._chunk([], self.usage())

    def _piece(self, i: int, text: str, finish: Optional[str], logprobs: Optional[Dict]) -> Dict:
        if self.chat:
            return chat_delta(i, {"content": text} if text or finish is None else {}, finish, logprobs)
        return completion_choice(i, text, finish, logprobs)

    def _chunk(self, choices: List[Dict], use: Optional[Dict] = None) -> Dict:
        return body(self.id, self.model, self.chat, choices, use, chunk=True)


class ServerFault(Exception):
    """Generation failed inside the engine (a 500: not the client's doing)."""


def _merge(a: Optional[Dict], b: Optional[Dict]) -> Optional[Dict]:
    """Two consecutive log-probability pieces of one choice as one."""
    if a is None or b is None:
        return a or b
    return {k: (a[k] + b[k] if isinstance(a[k], list) else a[k]) for k in a}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> Dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(index: int, text: str, finish: Optional[str], logprobs: Optional[Dict]) -> Dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_choice(index: int, text: str, finish: Optional[str], logprobs: Optional[Dict]) -> Dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish,
    }


def chat_delta(index: int, delta: Dict, finish: Optional[str], logprobs: Optional[Dict] = None) -> Dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def body(
    rid: str, model: str, chat: bool, choices: List[Dict], use: Optional[Dict] = None, chunk: bool = False
) -> Dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    out = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    return out
