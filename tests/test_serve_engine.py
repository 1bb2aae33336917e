"""Issue 8: the server built in-process — a full server answers 429 and recovers, one failing request
does not fail its batch — and the load test bench/run_serve_bench.py end to end."""

import json
import os
import threading

from conftest import ROOT, run_py
from paddlebloom.deploy.predictor import Sampling
from paddlebloom.serving.client import call


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
        engine = srv.app.engine
        engine.predictor.eos_token_id = -1  # the held job cannot end on its own while we look
        # ... nor by running out of tokens: its decode steps wait until we have looked (a quiet
        # machine decodes the tiny model's 512 tokens before the HTTP request arrives)
        gate, decode = threading.Event(), engine.steps.decode_logits
        engine.steps.decode_logits = lambda seqs: gate.wait(60) and decode(seqs)
        job = srv.app.engine.submit([5, 6, 7], Sampling(max_new_tokens=512))
        status, body = call(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 429 and body["error"]["type"] == "server_busy", body
        gate.set()
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
