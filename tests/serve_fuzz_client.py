"""The raw-socket HTTP client of tests/test_serve_fuzz.py: anything can be sent (broken request lines,
lying headers, half a body, a reset), answers are read with http.client; and the scripted
conversations that check their own answers (100 Continue, pipelining, slow readers, clients that leave)."""

import http.client
import io
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from serve_fuzz_values import MAX_NEW

TIMEOUT = 30  # seconds for any one answer: the server must never leave a client hanging


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


# ---- talking to the server over raw sockets (so that anything can be sent)
def address(base):
    host, port = base.split("//")[1].split(":")
    return host, int(port)


def exchange(base, pieces, method="POST", half_close=False, pause=0.0, read=True) -> Optional[Answer]:
    """Send `pieces` (bytes, `pause` seconds apart), then read one HTTP answer."""
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            s.sendall(piece)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        if not read:
            return None
        response = http.client.HTTPResponse(s, method=method)
        response.begin()  # skips a 100 Continue
        return Answer(response.status, response.msg, response.read())


class _Bytes(io.BytesIO):
    def close(self):  # http.client closes its file after each answer; the next answer is in it too
        pass


class _Received:
    """What a connection received, as http.client reads it from a socket."""

    def __init__(self, data: bytes):
        self.file, self.size = _Bytes(data), len(data)

    def makefile(self, mode):
        return self.file


def received_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def answers_in(data: bytes, method="POST") -> List[Answer]:
    """Every HTTP answer in what a connection received (http.client skips 100 Continue)."""
    received, answers = _Received(data), []
    while received.file.tell() < received.size:
        response = http.client.HTTPResponse(received, method=method)
        response.begin()
        answers.append(Answer(response.status, response.msg, response.read()))
    return answers


def request_bytes(body: bytes, path="/v1/completions", method="POST", headers=None, length=True) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Connection: close"]
    if length:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


def post(body: bytes, path="/v1/completions", **kw) -> Callable[[str], Answer]:
    return lambda base: exchange(base, [request_bytes(body, path)], **kw)


# ---- conversations that go beyond one request and one answer
def expect_continue(base, body):
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(request_bytes(body, headers={"Expect": "100-continue"})[: -len(body)])
        interim = s.recv(64)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(body)
        response = http.client.HTTPResponse(s, method="POST")
        response.begin()
        return Answer(response.status, response.msg, response.read())


def expect_refused(base, head):
    """A body over the limit is refused before the client sends it: 413 first, never 100 Continue."""
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(head)
        data = received_all(s)
    assert data.startswith(b"HTTP/1.1 413 ") and b'"error"' in data, data


def get_with_smuggled_request(base):
    """The body of a GET is not a second request: one answer, then the connection ends."""
    inner = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
        answers = answers_in(received_all(s), "GET")
    assert [a.status for a in answers] == [200] and b'"model"' in answers[0].body, answers


def pipelined(base, body):
    """Two requests in one write on a kept-alive connection: two answers, in order."""
    keep = request_bytes(body).replace(b"Connection: close", b"Connection: keep-alive")
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(keep + request_bytes(body))
        answers = answers_in(received_all(s))
    assert [a.status for a in answers] == [200, 200] and len({a.body.split(b'"text"')[1] for a in answers}) == 1, (
        answers
    )


def slow_reader(base, body):
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.sendall(request_bytes(body))
        time.sleep(1.0)
        response = http.client.HTTPResponse(s, method="POST")
        response.begin()
        return Answer(response.status, response.msg, response.read())


def leave_stream(base, after_events):
    body = json.dumps(
        {"prompt": "the cat", "max_tokens": MAX_NEW, "temperature": 1.5, "seed": after_events, "stream": True}
    ).encode()
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(request_bytes(body))
        seen = b""
        while seen.count(b"data: ") < after_events and (chunk := s.recv(256)):
            seen += chunk


def reset_after_sending(base, data):
    with socket.create_connection(address(base), timeout=TIMEOUT) as s:
        s.sendall(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
