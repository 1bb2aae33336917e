"""Issue 14: the server as real clients use it — the official `openai` client (logprobs, echo, prompt
lists and token ids, n > 1, presence/frequency penalties, streamed and not) — checked against the dynamic
model's own full forward pass. (lm-evaluation-harness's `local-completions` model: test_clients_lm_eval.py.)"""

import json
import os
import subprocess

import numpy as np
import paddle
import pytest

from conftest import HF_PY, ROOT, require_hf_venv, start_server
from paddlebloom import corpus
from paddlebloom.chat import build_prompt
from paddlebloom.data.templates import get_template
from paddlebloom.loading import load_model
from paddlebloom.serving.responses import token_name

WORKER = os.path.join(ROOT, "tests", "workers", "openai_client.py")
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(exported_tiny):
    proc, base = start_server(
        exported_tiny,
        "--model_name",
        MODEL,
        "--max_batch_size",
        "4",
        "--max_concurrent",
        "16",
        "--max_prompt_tokens",
        "96",
        "--max_new_tokens",
        "32",
    )
    yield base
    proc.terminate()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]


@pytest.fixture(scope="module")
def dynamic(trained_tiny):
    """The checkpoint in dygraph, no KV cache: log-softmax of every position's logits (float64)."""
    model, tokenizer, _ = load_model(trained_tiny)
    model.eval()

    def logprobs(ids):
        with paddle.no_grad():
            logits = model(paddle.to_tensor([list(ids)])).logits.numpy()[0].astype(np.float64)
        return (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )

    return logprobs, tokenizer


def continue_greedily(logprobs, prompt, steps, eos=2, presence=0.0, frequency=0.0):
    """Reference decoding: full forward each step, OpenAI's penalties written out here
    (logit -= count * frequency + (count > 0) * presence over generated tokens). Returns the new
    tokens and (token, log-softmax row) per step, an ending EOS included."""
    ids, new, scores = list(prompt), [], []
    for _ in range(steps):
        row = logprobs(ids)[-1]
        counts = np.bincount(np.asarray(new, dtype=np.int64), minlength=row.size).astype(np.float64)
        row = row - counts * frequency - (counts > 0) * presence
        row = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        token = int(row.argmax())
        scores.append((token, row))  # an ending EOS is scored too (its log-probability is reported)
        if token == eos:
            break
        new.append(token)
        ids.append(token)
    return new, scores


def run_client(base, calls):
    require_hf_venv()
    proc = subprocess.run([HF_PY, WORKER, base, json.dumps(calls)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def joined(chunks, index=0):
    """A streamed completion choice's text and logprobs, concatenated."""
    text, lp = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["index"] == index:
                text += choice["text"]
                for key in lp:
                    lp[key] += (choice["logprobs"] or {}).get(key) or []
    return text, lp


@pytest.fixture(scope="module")
def prompts():
    english = [s for s in corpus.sentences(60, seed=11) if s.isascii() and len(s.split()) >= 6]
    return [" ".join(english[0].split()[:3]), " ".join(english[1].split()[:4])]


def test_openai_client_completions(server, dynamic, prompts):
    logprobs, tok = dynamic
    ids = [tok.encode(p) for p in prompts]
    greedy = dict(model=MODEL, max_tokens=8, temperature=0)
    calls = [
        {"endpoint": "completions", "args": {**greedy, "prompt": prompts[0], "logprobs": 3}},
        {"endpoint": "completions", "args": {**greedy, "prompt": prompts[0], "logprobs": 3, "stream": True}},
        {"endpoint": "completions", "args": {**greedy, "prompt": ids, "echo": True, "max_tokens": 0, "logprobs": 1}},
        {
            "endpoint": "completions",
            "args": {"model": MODEL, "prompt": prompts, "n": 2, "temperature": 1.0, "seed": 7, "max_tokens": 6},
        },
        {
            "endpoint": "completions",
            "args": {"model": MODEL, "prompt": prompts, "n": 2, "temperature": 1.0, "seed": 7, "max_tokens": 6},
        },
        {
            "endpoint": "completions",
            "args": {
                "model": MODEL,
                "prompt": ids[1],
                "max_tokens": 8,
                "temperature": 0.7,
                "logprobs": 2,
                "seed": 3,
                "extra_body": {"top_k": 5},
            },
        },
        {
            "endpoint": "completions",
            "args": {
                **greedy,
                "prompt": prompts[1],
                "max_tokens": 12,
                "frequency_penalty": 0.5,
                "presence_penalty": -2.0,
            },
        },
        {"endpoint": "completions", "args": {**greedy, "prompt": prompts[1], "max_tokens": 12}},
        {
            "endpoint": "completions",
            "args": {**greedy, "prompt": prompts[1], "echo": True, "max_tokens": 4, "logprobs": 0, "stream": True},
        },
        {"endpoint": "completions", "args": {**greedy, "prompt": prompts[0], "n": 1, "best_of": 3}},
    ]
    plain, streamed, echoed, sampled, again, tempered, penalised, unpenalised, echo_stream, best_of = run_client(
        server, calls
    )

    # Greedy logprobs: the tokens the dynamic model picks, their log-softmax, the top-3, offsets in the text.
    new, steps = continue_greedily(logprobs, ids[0], 8)
    choice = plain["body"]["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == tok.decode(new) and lp["tokens"] == [token_name(tok, t) for t, _ in steps]
    np.testing.assert_allclose(lp["token_logprobs"], [row[t] for t, row in steps], atol=1e-4)
    for top, (_, row) in zip(lp["top_logprobs"], steps):
        np.testing.assert_allclose(sorted(top.values(), reverse=True), np.sort(row)[::-1][:3], atol=1e-4)
    assert lp["text_offset"] == [len(tok.decode(new[:i])) for i in range(len(steps))]
    # Streamed: the same text and logprobs in pieces.
    text, pieces = joined(streamed["chunks"])
    assert text == choice["text"] and pieces == lp and len(streamed["chunks"]) > 2

    # Echo with max_tokens 0 over token-id prompts: the prompt scored (the first token has no context).
    assert [c["index"] for c in echoed["body"]["choices"]] == [0, 1]
    for prompt, c in zip(ids, echoed["body"]["choices"]):
        assert c["text"] == tok.decode(prompt) and c["logprobs"]["token_logprobs"][0] is None
        expected = logprobs(prompt)[np.arange(len(prompt) - 1), prompt[1:]]
        np.testing.assert_allclose(c["logprobs"]["token_logprobs"][1:], expected, atol=1e-4)
        assert echoed["body"]["usage"]["completion_tokens"] == 0

    # Two prompts x n=2: indices prompt * n + j; a seed makes the whole answer reproducible.
    texts = [c["text"] for c in sorted(sampled["body"]["choices"], key=lambda c: c["index"])]
    assert len(texts) == 4 and texts == [c["text"] for c in sorted(again["body"]["choices"], key=lambda c: c["index"])]
    assert texts[0] != texts[1] or texts[2] != texts[3], texts  # choices draw from different streams
    assert sampled["body"]["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])

    # Sampled: log p of the distribution drawn from (temperature 0.7, top-5), recomputed from the dynamic model.
    lp = tempered["body"]["choices"][0]["logprobs"]
    names = {token_name(tok, t): t for t in range(tok.vocab_size)}
    drawn = [names[t] for t in lp["tokens"]]
    context = list(ids[1])
    for token, value, top in zip(drawn, lp["token_logprobs"], lp["top_logprobs"]):
        scaled = logprobs(context)[-1] / 0.7
        keep = np.argsort(-scaled)[:5]
        dist = scaled[keep] - np.log(np.exp(scaled[keep] - scaled[keep].max()).sum()) - scaled[keep].max()
        assert token in keep
        np.testing.assert_allclose(value, dist[list(keep).index(token)], atol=1e-4)
        np.testing.assert_allclose(max(top.values()), dist.max(), atol=1e-4)
        context.append(token)

    # OpenAI's presence/frequency penalties, written out independently above. (This confident tiny
    # model ignores positive ones; a negative presence penalty invites repeats, the frequency one curbs them.)
    new_pen, _ = continue_greedily(logprobs, ids[1], 12, presence=-2.0, frequency=0.5)
    assert penalised["body"]["choices"][0]["text"] == tok.decode(new_pen)
    assert penalised["body"]["choices"][0]["text"] != unpenalised["body"]["choices"][0]["text"]  # the penalty bites

    # Echo, streamed: the prompt comes first, then the continuation; logprobs for every token.
    text, pieces = joined(echo_stream["chunks"])
    cont, steps = continue_greedily(logprobs, ids[1], 4)
    assert text == prompts[1] + tok.decode(cont) and len(pieces["tokens"]) == len(ids[1]) + len(steps)
    assert pieces["token_logprobs"][0] is None and all(t == {} for t in pieces["top_logprobs"][1:])

    assert best_of["error"]["status"] == 400 and "best_of" in best_of["error"]["message"]


def test_openai_client_chat_logprobs_and_choices(server, dynamic, prompts):
    logprobs, tok = dynamic
    messages = [{"role": "user", "content": prompts[0]}]
    calls = [
        {
            "endpoint": "chat",
            "args": {
                "model": MODEL,
                "messages": messages,
                "max_tokens": 8,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 2,
            },
        },
        {
            "endpoint": "chat",
            "args": {
                "model": MODEL,
                "messages": messages,
                "max_tokens": 6,
                "temperature": 1.0,
                "seed": 5,
                "n": 2,
                "logprobs": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        },
    ]
    plain, streamed = run_client(server, calls)
    ids = build_prompt(tok, get_template("belle"), [], prompts[0], 96)
    new, steps = continue_greedily(logprobs, ids, 8)
    message = plain["body"]["choices"][0]
    content = message["logprobs"]["content"]
    assert message["message"]["content"] == tok.decode(new) and len(content) == len(steps)
    assert b"".join(bytes(c["bytes"]) for c in content) == b"".join(tok.token_bytes(t) for t, _ in steps)
    np.testing.assert_allclose([c["logprob"] for c in content], [row[t] for t, row in steps], atol=1e-4)
    assert all(
        len(c["top_logprobs"]) == 2
        and c["top_logprobs"][0]["logprob"] == max(c["logprob"], c["top_logprobs"][0]["logprob"])
        for c in content
    )

    chunks = streamed["chunks"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    per_choice = {0: [], 1: []}
    for chunk in chunks[:-1]:
        for c in chunk["choices"]:
            per_choice[c["index"]].extend(((c["logprobs"] or {}).get("content")) or [])
    # one entry per token, plus the EOS of an answer that ended on it (usage does not count EOS)
    finished = sum(c["finish_reason"] == "stop" for chunk in chunks[:-1] for c in chunk["choices"])
    assert sum(len(v) for v in per_choice.values()) == chunks[-1]["usage"]["completion_tokens"] + finished
    assert all(entry["logprob"] <= 0 for v in per_choice.values() for entry in v)
