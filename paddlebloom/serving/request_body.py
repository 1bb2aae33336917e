"""Reading a request body defensively: every way a body can be malformed is an ApiError (a 4xx naming
the field), found at a cost linear in the body's size, before anything else looks at it.

What the standard library lets through and why each is refused here:
- Content-Length is checked as ASCII digits: `str.isdigit` accepts '²' (then int() raised, a 500)
  and a 5000-digit length raised in int() too; two different lengths make the body ambiguous.
- Nesting depth is bounded by a scan of the bytes before parsing: json's C scanner recurses, and
  a body of a few thousand '[' raised RecursionError (a 500).
- NaN, Infinity and numbers beyond float64 (1e999 parses to inf) are not JSON numbers; sampling
  maths turns them into NaN probabilities. Integers over MAX_INT_DIGITS digits made int() raise.
- Strings must encode to UTF-8: a JSON escape can spell a lone surrogate ("\\ud800") that Python
  keeps in a str and the tokenizer refuses with a TypeError (a 500).
"""

import json
import math
import re
import socket
import time
from typing import Optional

import numpy as np

from .api import ApiError

MAX_DEPTH = 64  # OpenAI bodies nest 3-4 deep (messages[i].content parts); tool schemas a few more
MAX_INT_DIGITS = 40  # seeds and token ids fit in 20; Python's int() refuses over 4300
# A refused body still in flight is read and dropped (up to this much, for up to DISCARD_SECONDS)
# so that closing the connection does not reset it before the client has read the answer.
DISCARD_BYTES = 64 << 20
DISCARD_SECONDS = 10.0

# A JSON string up to its closing quote, or to the end of the body when it has none: always
# matches at a quote, so the scan never backtracks (a failing string pattern retried at every
# quote of `\"\"\"...` was quadratic).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_BRACKETS_ONLY = bytes(range(256)).translate(None, b"[]{}")  # every byte but the brackets
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 for an opener, -1 (int8) for a closer


class _BadNumber:
    """What the parser hands back for a number this server refuses; the walk names its field."""

    def __init__(self, text: str, why: str):
        self.text, self.why = text, why


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text, "is beyond the range of a float64")


def _parse_int(text: str):
    return (
        int(text)
        if len(text.lstrip("-")) <= MAX_INT_DIGITS
        else _BadNumber(text, f"has more than {MAX_INT_DIGITS} digits")
    )


def _parse_constant(text: str):
    return _BadNumber(text, "is not a JSON number (numbers must be finite)")


def content_length(headers, limit: int) -> int:
    """The body's length from the headers; ApiError 400/411/413 when there is none to trust or it is over `limit`."""
    if headers.get("Transfer-Encoding"):
        raise ApiError(411, "send the body with a Content-Length (chunked request bodies are not accepted)")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        raise ApiError(411, "a Content-Length header is required")
    if len(values) > 1:
        raise ApiError(400, f"conflicting Content-Length headers: {', '.join(sorted(values))[:80]}")
    length = values.pop()
    if not re.fullmatch(r"[0-9]+", length):
        raise ApiError(400, f"bad Content-Length {length[:40]!r}")
    if len(length) > 18 or int(length) > limit:
        raise ApiError(413, f"request body of {length[:40]} bytes is over the limit of {limit}")
    return int(length)


def pending(headers) -> int:
    """How many body bytes a client may still send when it is answered before its body is read."""
    length = (headers.get("Content-Length") or "").strip()
    if headers.get("Transfer-Encoding") or not re.fullmatch(r"[0-9]{0,18}", length):
        return DISCARD_BYTES  # a length we cannot know: drain what comes, within the bounds
    return min(int(length or 0), DISCARD_BYTES)


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """ApiError 400 when brackets outside strings nest deeper than `limit`: done on the bytes, as the
    parser itself is what deep nesting breaks. Not a validator: a malformed body that passes is the
    parser's to refuse (brackets after a broken string are never reached by it)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return  # cannot be deeper than the number of openers
    steps = _STRING.sub(b"", raw).translate(_STEPS, _BRACKETS_ONLY)
    if steps and int(np.frombuffer(steps, np.int8).cumsum().max()) > limit:
        raise ApiError(400, f"the body nests arrays/objects deeper than {limit} levels")


def _member(path: str, key: str) -> str:
    """`path.key`, or `path["key"]` (control characters escaped, shortened) when the key is not a plain name."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key[:40], ensure_ascii=False)}]"


def _shown(path: str) -> str:
    return f"'{path}'" if path else "the body"


def _text(value: str, where: str, param: Optional[str]) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400,
            f"{where} is not valid Unicode: a lone surrogate (\\u{ord(value[e.start]):04x}) at character {e.start}",
            param=param,
        ) from None


def _walk(value, path: str = "", param: Optional[str] = None) -> None:
    """ApiError 400 naming the first field holding a refused number or a string that is not Unicode;
    `param` is the top-level field it is in (OpenAI's error `param`)."""
    if isinstance(value, str):
        _text(value, _shown(path), param)
    elif isinstance(value, _BadNumber):
        shown = value.text if len(value.text) <= 24 else value.text[:24] + "..."
        raise ApiError(400, f"{_shown(path)}: {shown} {value.why}", param=param)
    elif isinstance(value, dict):
        for key, item in value.items():
            _text(key, f"a field name in '{path}'" if path else "a field name", param)
            _walk(item, _member(path, key), param if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", param)


def parse(raw: bytes):
    """The JSON value of a body, or ApiError 400 saying what is wrong and where."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not valid UTF-8 (byte {e.start})") from None
    check_depth(raw)
    try:
        value = json.loads(text, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {str(e).splitlines()[0]}") from None
    _walk(value)
    return value


def read(rfile, length: int) -> bytes:
    """Exactly `length` bytes, or ApiError 400 when the client ends its side first."""
    raw = rfile.read(length)
    if len(raw) < length:
        raise ApiError(400, f"the body ended after {len(raw)} of the {length} bytes Content-Length announced")
    return raw


def discard(connection: socket.socket, rfile, nbytes: int) -> None:
    """After an answer that did not read the body: end our side, then read and drop what the client
    is still sending (at most DISCARD_BYTES, for at most DISCARD_SECONDS, a second's silence ends it).
    Closing a socket with unread data makes Linux send a reset, and a client still uploading (Python's
    http.client sends the whole body before it reads) then got ECONNRESET instead of the 413."""
    try:
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        return
    left, deadline = min(nbytes, DISCARD_BYTES), time.monotonic() + DISCARD_SECONDS
    while left > 0:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        connection.settimeout(min(1.0, remaining))
        try:
            chunk = rfile.read1(min(left, 1 << 16))
        except (OSError, ValueError):  # timed out, reset; ValueError: the buffered reader is closed
            return
        if not chunk:
            return
        left -= len(chunk)
