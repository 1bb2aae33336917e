"""The cases of tests/test_serve_fuzz.py: a seeded generator of malformed and hostile requests, each
a Case that sends itself through the raw-socket client (serve_fuzz_client.py) and says what answer
is acceptable."""

import json
import random
from dataclasses import dataclass
from typing import Callable, List, Optional

from serve_fuzz_client import (
    Answer,
    exchange,
    expect_continue,
    expect_refused,
    get_with_smuggled_request,
    leave_stream,
    pipelined,
    post,
    request_bytes,
    reset_after_sending,
    slow_reader,
)
from serve_fuzz_values import ALWAYS_BAD, EXTREMES, FIELDS, MAX_BODY, NUMERIC, ODD, WRONG


@dataclass
class Case:
    name: str
    send: Callable[[str], Optional["Answer"]]  # base URL -> the answer (None: the client left without one)
    # "any": a 200 or a 4xx; "refused": a 4xx; "ok": a 200; "gone": no answer expected; "own": send checks
    expect: str = "any"
    field: Optional[tuple] = None  # a 4xx must name one of these
    statuses: Optional[tuple] = None  # a refusal must be one of these


def with_value(base_body: dict, path: list, text: str, *more) -> bytes:
    """base_body with the JSON text `text` put at `path` (a list of keys/indices);
    `more`: further (path, text) pairs."""
    body = json.loads(json.dumps(base_body))
    places = [(path, text), *more]
    for i, (where, _) in enumerate(places):
        holder = body
        for key in where[:-1]:
            holder = holder[key]
        holder[where[-1]] = f"\u0001MARK{i}\u0001"
    encoded = json.dumps(body, ensure_ascii=False)
    for i, (_, value) in enumerate(places):
        encoded = encoded.replace(json.dumps(f"\u0001MARK{i}\u0001"), value)
    return encoded.encode("utf-8")


# ---- the generator
def generate(rng: random.Random) -> List[Case]:
    completion = {"prompt": "the cat sat", "max_tokens": 4, "temperature": 0}
    sampled = {"prompt": "the cat sat", "max_tokens": 4, "temperature": 1.0, "top_p": 0.9, "top_k": 20, "seed": 1}
    chat = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "max_tokens": 4,
    }
    bases = [("/v1/completions", completion), ("/v1/completions", sampled), ("/v1/chat/completions", chat)]
    cases: List[Case] = []

    def add(name, send, expect="any", field=None, statuses=None):
        cases.append(Case(name, send, expect, (field,) if isinstance(field, str) else field, statuses))

    # 1. One field set to a hostile, odd or wrong value (JSON texts put into an otherwise good body).
    for _ in range(90):
        path, base = rng.choice(bases)
        field = rng.choice(FIELDS)
        text = rng.choice(ODD + ALWAYS_BAD)
        add(
            f"{path} {field}={text[:30]}",
            post(with_value(base, [field], text), path),
            "refused" if text in ALWAYS_BAD else "any",
            field,
        )
    for _ in range(60):  # two fields at once: a refusal names one of them
        path, base = rng.choice(bases)
        fields, texts = rng.sample(FIELDS, 2), [rng.choice(ODD + ALWAYS_BAD) for _ in range(2)]
        add(
            f"{path} {fields[0]}={texts[0][:20]} {fields[1]}={texts[1][:20]}",
            post(with_value(base, [fields[0]], texts[0], ([fields[1]], texts[1])), path),
            "refused" if set(texts) & set(ALWAYS_BAD) else "any",
            tuple(fields),
        )
    for text in ALWAYS_BAD:  # in fields the server otherwise ignores
        add(f"user={text[:30]}", post(with_value(completion, ["user"], text)), "refused", "user")
        add(
            f"messages[0].name={text[:30]}",
            post(with_value(chat, ["messages", 0, "name"], text), "/v1/chat/completions"),
            "refused",
            "messages",
        )
    for field, texts in WRONG.items():
        for text in texts:
            path, base = bases[2] if field == "messages" else rng.choice(bases[:2])
            add(f"{path} {field}={text} (wrong)", post(with_value(base, [field], text), path), "refused", field)
    for field in NUMERIC:
        for text in EXTREMES:
            add(f"sampled {field}={text}", post(with_value(sampled, [field], text), "/v1/completions"), "any", field)
    # Inside lists and objects: message parts, stop strings, stream options.
    for _ in range(40):
        where = rng.choice(
            [
                (["messages", 1, "content"], "messages"),
                (["messages", 1, "role"], "messages"),
                (["messages", 0, "name"], "messages"),
                (["messages", 1, "extra"], "messages"),
                (["stop"], "stop"),
                (["stream_options"], "stream_options"),
            ]
        )
        text = rng.choice(ODD + ALWAYS_BAD)
        path_in_body, field = where
        body = dict(chat, stream=True) if field == "stream_options" else chat
        if field == "stop":
            text = f'["end", {text}]'
        add(
            f"chat {'.'.join(map(str, path_in_body))}={text[:30]}",
            post(with_value(body, path_in_body, text), "/v1/chat/completions"),
            "refused" if any(bad in text for bad in ALWAYS_BAD) else "any",
            field,
        )

    # 2. Bodies that are not a good JSON object.
    good = json.dumps(completion).encode()
    for _ in range(12):
        cut = rng.randrange(1, len(good))
        add(f"truncated JSON at {cut}", post(good[:cut]), "refused", statuses=(400,))
    for _ in range(16):
        data = bytearray(good)
        at = rng.randrange(len(data))
        data[at] = rng.choice(b'\x00\x01\x7f\x80\xbf\xc0\xc3\xed\xf5\xff{}[]",:\\')
        add(f"byte {data[at]:#x} at {at}", post(bytes(data)))
    for name, body in [
        ("BOM", b"\xef\xbb\xbf" + good),
        ("UTF-16", json.dumps(completion).encode("utf-16")),
        ("trailing garbage", good + b" x"),
        ("two objects", good + good),
        ("empty", b""),
        ("whitespace", b"   \n"),
        ("a list", b"[1, 2]"),
        ("a string", b'"hi"'),
        ("null", b"null"),
        ("a number", b"12"),
        ("NUL bytes", b"\x00" * 64),
        ("overlong UTF-8", b'{"prompt": "\xc0\xaf"}'),
        ("encoded surrogate", b'{"prompt": "\xed\xa0\x80"}'),
        ("unpaired escape", b'{"prompt": "\\u12"}'),
        ("deep list", b"[" * 100000),
        ("deep object", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("deep inside a field", b'{"prompt": "x", "user": ' + b"[" * 70 + b"]" * 70 + b"}"),
        ("brackets in strings are not nesting", json.dumps({**completion, "user": "[" * 5000}).encode()),
        ("escaped quotes", b'{"prompt": "x", "user": "' + b'\\"[' * 3000 + b'"}'),
        ("duplicate keys", b'{"prompt": "a", "prompt": "the cat", "max_tokens": 2}'),
        ("a huge integer", b'{"prompt": "x", "seed": ' + b"7" * 5000 + b"}"),
    ]:
        expect = (
            "any" if name in ("brackets in strings are not nesting", "duplicate keys", "escaped quotes") else "refused"
        )
        add(f"body: {name}", post(body), expect)

    # 3. Lying or odd headers, request lines, methods.
    big = json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode()
    for length in ["abc", "-1", "1e3", "0x10", "²", "١٢", "+5", "1" * 5000, "99999999999999999999", ""]:
        header = (
            length.encode("latin-1") if length.isascii() or length == "²" else length.encode()
        )  # '²' as one byte: str.isdigit takes it
        raw = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
            + header
            + b"\r\n\r\n"
            + good
        )
        add(
            f"Content-Length {length[:12]!r}",
            lambda b, raw=raw: exchange(b, [raw]),
            "refused",
            statuses=(400, 411, 413),
        )
    add(
        "two different Content-Lengths",
        lambda b: exchange(b, [request_bytes(good, headers={"Content-Length": "3"})]),
        "refused",
        statuses=(400,),
    )
    add("no Content-Length", lambda b: exchange(b, [request_bytes(good, length=False)]), "refused", statuses=(411,))
    add(
        "chunked",
        lambda b: exchange(
            b,
            [
                request_bytes(
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good), length=False, headers={"Transfer-Encoding": "chunked"}
                )
            ],
        ),
        "refused",
        statuses=(411,),
    )
    add(
        "Content-Length short of the body",
        lambda b: exchange(b, [request_bytes(good)[:-5]], half_close=True),
        "refused",
        statuses=(400,),
    )
    add(
        "Content-Length beyond the body",
        lambda b: exchange(
            b, [request_bytes(good).replace(b"Content-Length: ", b"Content-Length: 1")], half_close=True
        ),
        "refused",
        statuses=(400, 413),
    )
    add(
        "Content-Length below the body",
        lambda b: exchange(
            b,
            [
                request_bytes(good + b"GET / HTTP/1.1\r\n\r\n").replace(
                    b"Content-Length: %d" % (len(good) + 18), b"Content-Length: %d" % len(good)
                )
            ],
        ),
        "ok",
    )
    for size in (MAX_BODY + 1, 200_000, 20 << 20):
        body = json.dumps({"prompt": "x" * size}).encode()
        add(f"{size}-byte body", post(body), "refused", statuses=(413,))
    add(
        "oversized body announced, Expect: 100-continue",
        lambda b: expect_refused(b, request_bytes(big, headers={"Expect": "100-continue"})[: -len(big)]),
        "own",
    )
    add("Expect: 100-continue", lambda b: expect_continue(b, good), "ok")
    add(
        "oversized body announced, never sent",
        lambda b: exchange(b, [request_bytes(big)[: -len(big)]]),
        "refused",
        statuses=(413,),
    )
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "post", "G\u00c9T", "TRACE"]:
        add(
            f"method {method}",
            lambda b, m=method: exchange(b, [request_bytes(good, method=m)], method=m),
            "refused",
            statuses=(405,),
        )
    for line in [
        b"HELLO",
        b"GET",
        b"POST /v1/completions HTTP/9.9",
        b"POST /v1/completions HTTP/2.0",
        b"POST /v1/completions HTTP/1.x",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /health HTTP/1.1 extra",
    ]:
        add(f"request line {line[:30]!r}", lambda b, line=line: exchange(b, [line + b"\r\nHost: x\r\n\r\n"]), "refused")
    add(
        "101 headers",
        lambda b: exchange(b, [request_bytes(good, headers={f"X-{i}": "y" for i in range(101)})]),
        "refused",
        statuses=(431,),
    )
    add(
        "a 70 kB header",
        lambda b: exchange(b, [request_bytes(good, headers={"X-Big": "y" * 70000})]),
        "refused",
        statuses=(431,),
    )
    add(
        "non-ASCII header",
        lambda b: exchange(b, [request_bytes(good).replace(b"Host: 127.0.0.1", b"Host: \xff\xfe\x00")]),
        "any",
    )
    add("GET with a body holding another request", get_with_smuggled_request, "own")
    add("unknown path", lambda b: exchange(b, [request_bytes(good, path="/v1/engines")]), "refused", statuses=(404,))
    add(
        "GET on completions",
        lambda b: exchange(b, [request_bytes(b"", path="/v1/completions", method="GET")], method="GET"),
        "refused",
        statuses=(405,),
    )

    # 4. Slow clients, pipelining, and clients that leave.
    request = request_bytes(json.dumps(dict(completion, prompt="the dog")).encode())
    for pause in (0.005, 0.02):
        add(
            f"trickled every {pause}s",
            lambda b, p=pause: exchange(b, [request[i : i + 7] for i in range(0, len(request), 7)], pause=p),
            "ok",
        )
    add("two requests pipelined", lambda b: pipelined(b, good), "own")
    add("slow reader of a stream", lambda b: slow_reader(b, json.dumps(dict(completion, stream=True)).encode()), "ok")
    for name, cut in [("during the headers", 30), ("during the body", len(request) - 10)]:
        add(f"gone {name}", lambda b, c=cut: exchange(b, [request[:c]], read=False), "gone")
    add("gone after sending", lambda b: exchange(b, [request], read=False), "gone")
    for i in range(6):
        add(f"gone mid-stream {i}", lambda b, i=i: leave_stream(b, i), "gone")
    add("reset mid-upload", lambda b: reset_after_sending(b, request[:-10]), "gone")
    rng.shuffle(cases)
    return cases
