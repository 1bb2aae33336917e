"""A minimal standard-library client for the server: what the load test and the tests speak."""

import http.client
import json
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit


def _connection(base: str, timeout: float) -> http.client.HTTPConnection:
    url = urlsplit(base)
    return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)


def call(
    base: str,
    method: str,
    path: str,
    body=None,
    raw: Optional[bytes] = None,
    headers: Optional[Dict] = None,
    timeout: float = 300,
) -> Tuple[int, object]:
    """(status, JSON body, or text when it is not JSON) of one request on its own connection."""
    conn = _connection(base, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text
    finally:
        conn.close()


def stream(base: str, path: str, body: Dict, timeout: float = 300) -> Tuple[List[Dict], List[float]]:
    """The parsed server-sent events of one streamed request (up to [DONE]) and when each arrived
    (seconds since the request was sent)."""
    conn = _connection(base, timeout)
    began = time.perf_counter()
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps({**body, "stream": True}).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {response.read()[:300]!r}")
        events, times = [], []
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                return events, times
            events.append(json.loads(line[6:]))
            times.append(time.perf_counter() - began)
        raise RuntimeError(f"POST {path}: the stream ended without [DONE]")
    finally:
        conn.close()


def text_of(events: List[Dict]) -> List[str]:
    """The text pieces of a stream, completions or chat."""
    pieces = []
    for event in events:
        for choice in event.get("choices", []):
            piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if piece:
                pieces.append(piece)
    return pieces
