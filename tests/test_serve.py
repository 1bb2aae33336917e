"""Issue 8: the HTTP server on the exported program — same text as deploy/infer_generation.py, streaming,
batching, bounds and bad requests, client hang-ups. (The chat page: test_serve_chat_page.py; the server
built in-process, its engine and the load test: test_serve_engine.py; messages and text: test_serve_text.py.)"""

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_prompts import sentence_prompts

from conftest import ROOT, run_py, start_server
from paddlebloom.serving.client import call, stream, text_of

DEPLOY = os.path.join(ROOT, "deploy", "infer_generation.py")
NEW = 20
MAX_PROMPT, MAX_NEW = 64, 48


@pytest.fixture(scope="module")
def server(exported_tiny):
    # Chunks of 4 tokens: a 20-token answer crosses 4 chunk boundaries (and streams in 5 pieces).
    proc, base = start_server(
        exported_tiny,
        "--chunk_tokens",
        "4",
        "--max_batch_size",
        "8",
        "--max_concurrent",
        "16",
        "--max_prompt_tokens",
        str(MAX_PROMPT),
        "--max_new_tokens",
        str(MAX_NEW),
        "--max_body_bytes",
        "4096",
    )
    yield base
    proc.terminate()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]


@pytest.fixture(scope="module")
def prompts():
    return sentence_prompts()


@pytest.fixture(scope="module")
def reference(exported_tiny, prompts):
    """deploy/infer_generation.py's greedy predictions of the raw prompts (stdin lines)."""
    proc = run_py(
        [DEPLOY, "--model_dir", exported_tiny, "--max_new_tokens", str(NEW), "--decode_strategy", "greedy_search"],
        input="\n".join(prompts) + "\n",
    )
    return [json.loads(line)["prediction"] for line in proc.stdout.splitlines()]


def complete(base, prompt, **kw):
    status, body = call(base, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": NEW, "temperature": 0, **kw})
    assert status == 200, body
    return body


def test_completion_equals_infer_generation_greedy(server, prompts, reference):
    assert len(set(reference)) > 1 and max(map(len, reference)) > 20, reference  # real, distinct continuations
    for prompt, expected in zip(prompts, reference):
        body = complete(server, prompt)
        assert body["choices"][0]["text"] == expected, (prompt, body)
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= NEW
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_concurrent_requests_are_batched_and_equal_sequential(server, prompts, reference):
    before = call(server, "GET", "/health")[1]
    with ThreadPoolExecutor(12) as pool:
        texts = list(pool.map(lambda p: complete(server, p)["choices"][0]["text"], prompts * 2))
    assert texts == reference * 2  # padding with other prompts and joining mid-flight change nothing
    after = call(server, "GET", "/health")[1]
    assert after["max_batch_size_seen"] > 1, after
    assert after["program_calls"] - before["program_calls"] < after["tokens_generated"] - before["tokens_generated"], (
        after
    )
    assert after["active"] == 0 and after["waiting"] == 0


def test_streaming_delivers_the_same_text_in_pieces(server, prompts, reference):
    longest = max(range(len(prompts)), key=lambda i: len(reference[i]))
    events, times = stream(server, "/v1/completions", {"prompt": prompts[longest], "max_tokens": NEW, "temperature": 0})
    pieces = text_of(events)
    assert "".join(pieces) == reference[longest] and len(pieces) >= 3, pieces
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length") and times == sorted(times)
    # chat: role first, then content pieces, then the finish reason; same text as without streaming
    body = {"messages": [{"role": "user", "content": prompts[longest]}], "max_tokens": NEW, "temperature": 0}
    events, _ = stream(server, "/v1/chat/completions", body)
    status, whole = call(server, "POST", "/v1/chat/completions", body)
    assert status == 200 and whole["object"] == "chat.completion"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant" and events[-1]["choices"][0]["finish_reason"]
    assert "".join(text_of(events)) == whole["choices"][0]["message"]["content"]


def test_chat_uses_the_template_and_history(server, exported_tiny, prompts, tmp_path):
    from paddlebloom.chat import build_prompt
    from paddlebloom.data.templates import get_template
    from paddlebloom.tokenizer import BloomTokenizer

    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"instruction": prompts[0]}) + "\n")
    out = tmp_path / "out.jsonl"
    run_py(
        [
            DEPLOY,
            "--model_dir",
            exported_tiny,
            "--data_file",
            str(data),
            "--output_file",
            str(out),
            "--max_new_tokens",
            str(NEW),
        ]
    )
    status, body = call(
        server,
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": prompts[0]}], "max_tokens": NEW, "temperature": 0},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == json.loads(out.read_text())["prediction"]
    # History is rendered as predict/chat.py renders it; turns that do not fit are dropped.
    tokenizer, template = BloomTokenizer.from_pretrained(exported_tiny), get_template("belle")
    history = [(prompts[1], "a b"), (prompts[2], "c d " * 10)]
    messages = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    status, body = call(
        server,
        "POST",
        "/v1/chat/completions",
        {"messages": messages + [{"role": "user", "content": prompts[3]}], "max_tokens": 4},
    )
    assert status == 200 and body["usage"]["prompt_tokens"] == len(
        build_prompt(tokenizer, template, history, prompts[3], MAX_PROMPT)
    )
    kept = build_prompt(tokenizer, template, history[1:], prompts[3], MAX_PROMPT)
    assert len(kept) < body["usage"]["prompt_tokens"] <= MAX_PROMPT or len(kept) == body["usage"]["prompt_tokens"]


def test_seeded_sampling_is_reproducible_and_stop_strings_cut(server, prompts, reference):
    hot = {"prompt": prompts[0], "max_tokens": NEW, "temperature": 1.5, "top_k": 50}
    first = complete(server, **{**hot, "seed": 3})["choices"][0]["text"]
    assert complete(server, **{**hot, "seed": 3})["choices"][0]["text"] == first
    assert {complete(server, **{**hot, "seed": s})["choices"][0]["text"] for s in (4, 5, 6)} - {first}
    longest = max(reference, key=len)
    stop = longest[len(longest) // 2 : len(longest) // 2 + 3]
    body = complete(server, prompts[reference.index(longest)], stop=[stop])
    assert (
        body["choices"][0]["text"] == longest[: longest.index(stop)] and body["choices"][0]["finish_reason"] == "stop"
    )


def _raw(base, data: bytes) -> bytes:
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


MALFORMED = [
    ("POST", "/v1/completions", b"{not json", 400),
    ("POST", "/v1/completions", b"[1, 2]", 400),
    ("POST", "/v1/completions", b"\xff\xfe{}", 400),
    ("POST", "/v1/completions", {"prompt": "hi", "max_token": 5}, 400),  # a typo is an unknown field
    ("POST", "/v1/completions", {}, 400),
    ("POST", "/v1/completions", {"prompt": 5}, 400),
    ("POST", "/v1/completions", {"prompt": "the cat " * 100}, 400),  # over --max_prompt_tokens
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": MAX_NEW + 1}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": "10"}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "temperature": -1}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "top_p": 0}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "n": 0}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "n": 2, "best_of": 3}, 400),  # no server-side ranking
    ("POST", "/v1/completions", {"prompt": "hi", "logprobs": 6}, 400),  # OpenAI's completions bound is 5
    ("POST", "/v1/completions", {"prompt": "hi", "echo": 1}, 400),
    ("POST", "/v1/completions", {"prompt": [5, "a"]}, 400),
    ("POST", "/v1/completions", {"prompt": [[5], [10**9]]}, 400),  # a token id outside the vocabulary
    ("POST", "/v1/completions", {"prompt": "hi", "presence_penalty": 2.5}, 400),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        400,
    ),  # needs logprobs: true
    ("POST", "/v1/completions", {"prompt": "hi", "stream": "yes"}, 400),
    ("POST", "/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404),
    ("POST", "/v1/chat/completions", {"messages": []}, 400),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        400,
    ),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("POST", "/v1/completions", {"prompt": "x" * 5000}, 413),  # over --max_body_bytes
    ("GET", "/v2/nothing", None, 404),
    ("PUT", "/v1/completions", {"prompt": "hi"}, 405),
]


def test_malformed_requests_get_4xx_json_and_the_server_keeps_serving(server, prompts, reference):
    for method, path, body, expected in MALFORMED:
        raw = body if isinstance(body, bytes) else None
        status, answer = call(server, method, path, None if raw else body, raw=raw)
        assert status == expected, (method, path, body, status, answer)
        assert (
            isinstance(answer, dict)
            and set(answer["error"]) >= {"message", "type"}
            and "\n" not in answer["error"]["message"]
        ), answer
    # Below the JSON layer: no Content-Length, a garbage request line.
    for data, expected in (
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n", b" 411 "),
        (b"HELLO\r\n\r\n", b" 400 "),
    ):
        answer = _raw(server, data)
        assert expected in answer.split(b"\r\n", 1)[0] and b'"error"' in answer, answer
    assert len(MALFORMED) + 2 >= 20
    status, health = call(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert complete(server, prompts[0])["choices"][0]["text"] == reference[0]


def test_a_client_that_hangs_up_frees_its_slot(server, prompts):
    before = call(server, "GET", "/health")[1]
    host, port = server.split("//")[1].split(":")
    body = json.dumps(
        {"prompt": prompts[0], "max_tokens": MAX_NEW, "temperature": 1.5, "seed": 1, "stream": True, "stop": ["\u2603"]}
    ).encode()
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert b"200 OK" in s.recv(4096)  # the headers (and maybe the first event): it is running
    deadline = time.time() + 60
    while time.time() < deadline:
        health = call(server, "GET", "/health")[1]
        if health["active"] == 0 and health["waiting"] == 0 and health["requests"] > before["requests"]:
            break
        time.sleep(0.1)
    assert health["active"] == 0 and health["waiting"] == 0, health
    # Either it was cancelled, or it already ended on its own: it never generated all MAX_NEW tokens after the hang-up.
    assert (
        health["cancelled"] > before["cancelled"] or health["tokens_generated"] - before["tokens_generated"] < MAX_NEW
    ), (before, health)
