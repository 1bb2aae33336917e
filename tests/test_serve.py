"""Issue 8: the HTTP server on the exported program — same text as deploy/infer_generation.py, streaming,
batching, bounds and bad requests, client hang-ups — and the chat page in headless Chromium."""

import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, run_py, start_server
from paddlebloom import corpus
from paddlebloom.deploy.predictor import Sampling
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
    # Beginnings of the corpus's sentences: the tiny model goes on with them for many tokens.
    sentences = corpus.sentences(60, seed=11)
    english = [s for s in sentences if s.isascii() and len(s.split()) >= 6]
    chinese = [s for s in sentences if not s.isascii() and " " not in s]
    # Chinese characters are 3 bytes in several byte-level tokens: streaming must not split them.
    return [" ".join(s.split()[:n]) for s, n in zip(english, (2, 3, 4, 5, 2))] + [chinese[0][:3]]


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
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
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


def test_full_server_answers_429_and_recovers(exported_tiny):
    from paddlebloom.serving.cli import build, parse_args

    srv = build(
        parse_args(
            [
                "--model_dir",
                exported_tiny,
                "--port",
                "0",
                "--max_concurrent",
                "1",
                "--max_batch_size",
                "1",
                "--chunk_tokens",
                "1",
                "--cpu_threads",
                "1",
            ]
        )
    )
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        srv.app.engine.predictor.eos_token_id = -1  # the held job cannot end on its own while we look
        job = srv.app.engine.submit([5, 6, 7], Sampling(max_new_tokens=512))
        status, body = call(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 429 and body["error"]["type"] == "server_busy", body
        job.cancel()
        while not isinstance(job.events.get(timeout=60), tuple):
            pass
        assert call(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
        assert srv.app.engine.snapshot()["rejected_busy"] == 1
    finally:
        srv.shutdown()
        srv.server_close()
        srv.app.engine.close()


def test_one_failing_request_does_not_fail_its_batch(exported_tiny):
    """A row whose token choice raises (its own settings' fault) ends with an error; the request
    sharing its program calls still gets the answer it gets alone."""
    from paddlebloom.serving.cli import build, parse_args

    srv = build(
        parse_args(["--model_dir", exported_tiny, "--port", "0", "--max_batch_size", "4", "--cpu_threads", "1"])
    )
    engine = srv.app.engine
    try:

        def drain(job):
            while not isinstance(event := job.events.get(timeout=60), tuple):
                pass
            return event[1], list(job.tokens)

        alone = drain(engine.submit([5, 6, 7], Sampling(max_new_tokens=8)))
        choose = engine.steps.choose

        def failing(seq, row):
            if seq.prompt[0] == 99:
                raise FloatingPointError("this row's settings broke its sampler")
            return choose(seq, row)

        engine.steps.choose = failing  # first_token (prefill) goes through it too
        bad, good = engine.submit_many(
            [([99, 5], Sampling(max_new_tokens=8), False), ([5, 6, 7], Sampling(max_new_tokens=8), False)]
        )
        assert drain(bad)[0] == "error" and drain(good) == alone
        assert engine.snapshot()["max_batch_size_seen"] == 2  # they did share program calls
    finally:
        srv.server_close()
        engine.close()


def _chromium():
    found = shutil.which("chromium") and os.path.exists("/usr/bin/chromedriver")
    if not found:
        if os.environ.get("CI") == "true":
            raise AssertionError("chromium / chromedriver missing on CI (make browser installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")


@pytest.fixture()
def plain_server(exported_tiny):
    """A server whose chat prompts are the raw text (--template plain): the tiny model, pre-trained on
    sentences but not instruction-tuned, continues those for many tokens; chunks of 2 make many pieces."""
    proc, base = start_server(exported_tiny, "--template", "plain", "--chunk_tokens", "2")
    yield base
    proc.terminate()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]


# In the page, with the element's own font: each Han character of the element drawn on a canvas.
# Without a CJK font every one comes out as the same empty box (the glyph of a private-use character).
GLYPHS_DRAWN = """
const el = arguments[0], font = getComputedStyle(el).font;
const draw = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 64;
  const g = c.getContext('2d'); g.font = font; g.fillText(ch, 8, 40); return c.toDataURL(); };
const han = [...el.textContent].filter((ch) => /\\p{Script=Han}/u.test(ch)), box = draw('\\uE000');
return {han: han.length, kinds: new Set(han).size, distinct: new Set(han.map(draw)).size, boxes: han.filter((ch) => draw(ch) === box).length};
"""


def test_chat_page_streams_an_answer_in_headless_chromium(plain_server, prompts):
    _chromium()
    server = plain_server
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,720",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(server + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text not in ("", "connecting…"))
        box = driver.find_element(By.ID, "max_tokens")
        box.clear()
        box.send_keys(str(MAX_NEW))
        driver.find_element(By.ID, "input").send_keys(prompts[3] + "\n")
        done = WebDriverWait(driver, 120).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")
        )
        answer = done[0]
        assert answer.text.strip() and int(answer.get_attribute("data-chunks")) >= 2, (
            answer.text,
            answer.get_attribute("data-chunks"),
        )
        # A second turn carries the history; the tiny model learned "The word for X in Chinese is Y.",
        # so this answer is in Chinese, which must be drawn as glyphs, not empty boxes.
        driver.find_element(By.ID, "input").send_keys("The word for dog in Chinese is\n")
        WebDriverWait(driver, 120).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")) == 2
        )
        chinese = driver.find_elements(By.CSS_SELECTOR, ".assistant")[1]
        drawn = driver.execute_script(GLYPHS_DRAWN, chinese)
        assert drawn["han"] >= 1 and drawn["boxes"] == 0 and drawn["distinct"] == drawn["kinds"], (chinese.text, drawn)
        # Stop: the page's button is clicked the moment the first piece shows (a person is slower than the tiny model).
        driver.execute_script("""new MutationObserver((changes, observer) => {
            const last = [...document.querySelectorAll('.assistant')].pop();
            if (last && last.dataset.chunks === '1') { observer.disconnect(); document.getElementById('stop').click(); }
        }).observe(document.getElementById('log'), {subtree: true, childList: true, attributes: true});""")
        # Sampling hot enough that EOS is unlikely: the answer runs for all MAX_NEW tokens unless stopped.
        driver.find_element(By.ID, "sample").click()
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("5")
        driver.find_element(By.ID, "input").send_keys(prompts[2] + "\n")
        WebDriverWait(driver, 120).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant:not([data-state=streaming])")) == 3
        )
        states = [a.get_attribute("data-state") for a in driver.find_elements(By.CSS_SELECTOR, ".assistant")]
        assert states == ["done", "done", "stopped"], states
        assert driver.find_element(By.ID, "send").is_enabled() and not driver.find_element(By.ID, "stop").is_enabled()
        shot = os.path.join(ROOT, "runs", "artefacts", "serve_chat.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        assert driver.save_screenshot(shot) and os.path.getsize(shot) > 5000
        print(f"screenshot: {shot}")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()


def test_text_stream_holds_back_partial_characters_and_stop_strings(exported_tiny):
    from paddlebloom.serving.responses import TextStream
    from paddlebloom.tokenizer import BloomTokenizer

    tokenizer = BloomTokenizer.from_pretrained(exported_tiny)
    text = "猫 sat on the mat. END of it"
    ids = tokenizer.encode(text)
    plain = TextStream(tokenizer, [])
    pieces = [plain.feed([i]) for i in ids] + [plain.finish()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    stopping = TextStream(tokenizer, ["END", "xyz"])
    out = ""
    for i in ids:
        out += stopping.feed([i])
        if stopping.stopped:
            break
    assert stopping.stopped and out + stopping.finish() == "猫 sat on the mat. "


def test_chat_messages_become_turns():
    from paddlebloom.serving.api import ApiError, chat_turns

    system, history, query = chat_turns(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "Now in French."},
            {"role": "user", "content": "2+2?"},
        ]
    )
    assert system == "Be brief." and history == [("hi", "hello")] and query == "Now in French.\n\n2+2?"
    for bad in (
        [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": "a", "extra": 1}],
        "hi",
    ):
        with pytest.raises(ApiError):
            chat_turns(bad)


def test_chat_system_prompt_is_the_templates_as_in_training(exported_tiny):
    """A leading system message goes into the template's system slot: the server's prompt ids are
    those of the same conversation as a training record ({"messages": ...}) up to its last answer."""
    from paddlebloom.data.encode import encode_turns
    from paddlebloom.data.formats import to_dialogue
    from paddlebloom.data.templates import get_template
    from paddlebloom.serving.api import Limits, parse_chat
    from paddlebloom.tokenizer import BloomTokenizer

    tokenizer, template = BloomTokenizer.from_pretrained(exported_tiny), get_template("belle")
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
    ]
    served = parse_chat({"messages": messages}, tokenizer, template, Limits(512, 16, {})).prompts[0]
    dialogue = to_dialogue({"messages": messages + [{"role": "assistant", "content": "Rome"}]})
    ids, _ = encode_turns(dialogue.turns, tokenizer, template, 512, 64, dialogue.system)
    assert "Answer in one word." in tokenizer.decode(served)
    assert served == ids[: len(served)].tolist() and tokenizer.decode(ids[len(served) :].tolist()).startswith("Rome")


def test_load_test_runs_and_reports_batching(tmp_path):
    """bench/run_serve_bench.py end to end on a tiny model and a few requests (its speed is not asserted here)."""
    out = tmp_path / "serve.json"
    run_py(
        [
            os.path.join(ROOT, "bench", "run_serve_bench.py"),
            "--clients",
            "1",
            "4",
            "--requests",
            "8",
            "--max_tokens",
            "16",
            "--max_seconds",
            "60",
            "--hidden",
            "64",
            "--layers",
            "2",
            "--vocab",
            "2000",
            "--work_dir",
            str(tmp_path / "work"),
            "--output",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert [r["clients"] for r in result["batched"]] == [1, 4] and result["sequential"][0]["clients"] == 4
    assert all(
        r["errors"] == 0 and r["requests"] == 8 and r["tokens_per_s"] > 0
        for r in result["batched"] + result["sequential"]
    )
    assert result["batched"][1]["mean_batch"] > 1 and result["sequential"][0]["mean_batch"] == 1
    from bench.write_report import serving_section

    assert "requests/s" in serving_section(result)
