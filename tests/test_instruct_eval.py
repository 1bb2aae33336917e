"""Issue 9: the instruction eval really talks to an OpenAI-compatible judge (a loopback fake): replies
parsed, retries, an unreachable judge reported, answers equal to direct generation and at TP=2."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, launch, run_py, shared_file
from paddlebloom.evaluation import judge as judge_mod
from paddlebloom.tokenizer import BloomTokenizer

RUN_INSTRUCT = os.path.join(ROOT, "eval", "run_instruct_eval.py")


class FakeJudge:
    """A loopback OpenAI-compatible chat endpoint: scores 0.25 for class 'math', else 0.75;
    answers 500 once to the first request to exercise the retry."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if len(outer.requests) == 1:
                    self.send_response(500)
                    self.end_headers()
                    return
                prompt = body["messages"][-1]["content"]
                score = 0.25 if "Category: math" in prompt else 0.75
                reply = {
                    "choices": [
                        {"message": {"role": "assistant", "content": f'Sure. {{"score": {score}, "reason": "fake"}}'}}
                    ]
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_judge_reply_parsing_and_rubric():
    assert judge_mod.parse_score('{"score": 0.8, "reason": "ok"}') == (0.8, "ok")
    assert judge_mod.parse_score("Score: 1")[0] == 1.0
    for bad in ("no idea", '{"score": 7}', "score: 7"):
        with pytest.raises(ValueError):
            judge_mod.parse_score(bad)
    rubric = judge_mod.load_rubric()
    filled = judge_mod.fill(rubric, category="code", question="Q{x}", reference="R", answer="A {}")
    assert "Q{x}" in filled and "A {}" in filled and "{{" not in filled
    assert judge_mod.chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError):
        judge_mod.chat_url("h:1/v1")


def test_judge_client_retries_and_reports_unreachable_judge():
    with FakeJudge() as fake:
        verdict = judge_mod.JudgeClient(fake.url, "judge-x", api_key="k", retries=1).judge("math", "1+1?", "2", "3")
    assert (verdict.score, verdict.error) == (0.25, None) and len(fake.requests) == 2
    assert fake.requests[1]["path"] == "/v1/chat/completions" and fake.requests[1]["auth"] == "Bearer k"
    assert (
        fake.requests[1]["body"]["model"] == "judge-x" and "1+1?" in fake.requests[1]["body"]["messages"][0]["content"]
    )
    closed = judge_mod.JudgeClient(fake.url, "judge-x", retries=0, timeout=2).judge(
        "math", "q", "r", "a"
    )  # server is shut down
    assert closed.score is None and fake.url.split("/v1")[0] in closed.error


@pytest.fixture(scope="module")
def belle_slice(tmp_path_factory):
    records = [json.loads(line) for line in open(shared_file("instruct", "belle_eval_set_1k.jsonl"), encoding="utf-8")]
    math_ = [r for r in records if r["class"] == "math"][:2]
    other = [r for r in records if r["class"] != "math"][:3]
    path = tmp_path_factory.mktemp("belle") / "belle_eval_slice.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in math_ + other), encoding="utf-8")
    return str(path), math_ + other


def test_instruction_eval_with_judge(tiny_dir, belle_slice, tmp_path):
    path, records = belle_slice
    out = tmp_path / "out"
    with FakeJudge() as fake:
        run_py(
            [
                RUN_INSTRUCT,
                "--model_name_or_path",
                tiny_dir,
                "--eval_file",
                path,
                "--output_dir",
                str(out),
                "--max_new_tokens",
                "6",
                "--batch_size",
                "2",
                "--judge_url",
                fake.url,
                "--judge_model",
                "judge-x",
                "--judge_retries",
                "1",
            ]
        )
    rows = [json.loads(line) for line in open(out / "predictions.jsonl", encoding="utf-8")]
    assert [r["question"] for r in rows] == [r["question"] for r in records]
    assert all(
        r["prompt"] == f"Human: \n{r['question']}\n\nAssistant: \n" and isinstance(r["answer"], str) for r in rows
    )
    assert all(r["answer_tokens"] == len(BloomTokenizer.from_pretrained(tiny_dir).encode(r["answer"])) for r in rows)
    assert any(r["answer_tokens"] > 0 for r in rows)
    assert [r["judge_score"] for r in rows] == [0.25 if r["class"] == "math" else 0.75 for r in rows]
    assert len(fake.requests) == len(rows) + 1  # one retried 500
    rubric_line = judge_mod.load_rubric().splitlines()[0]
    for request, row in zip(fake.requests[1:], rows):
        content = request["body"]["messages"][0]["content"]
        assert (
            rubric_line in content
            and row["question"] in content
            and row["std_answer"] in content
            and row["answer"] in content
        )
    report = json.loads((out / "report.json").read_text())
    classes, overall = report["classes"], report["overall"]
    assert (
        list(classes) == list(dict.fromkeys(r["class"] for r in records))
        and sum(c["count"] for c in classes.values()) == 5
    )
    assert classes["math"]["count"] == 2 and classes["math"]["mean_score"] == 0.25 and overall["count"] == 5
    assert overall["mean_score"] == pytest.approx((2 * 0.25 + 3 * 0.75) / 5) and overall["judge_errors"] == 0
    assert overall["mean_answer_chars"] == pytest.approx(sum(len(r["answer"]) for r in rows) / 5)
    # the runner hands generation the templated prompt and the flags it was given
    from paddlebloom.generation import GenerationConfig, generate_text
    from paddlebloom.loading import load_model

    model, tok, _ = load_model(tiny_dir)
    direct = generate_text(
        model, tok, [rows[0]["prompt"]], GenerationConfig(max_new_tokens=6, eos_token_id=2, pad_token_id=3)
    )
    assert direct == [rows[0]["answer"]]
    assert report["judge"]["model"] == "judge-x" and report["generation"]["max_new_tokens"] == 6


def test_instruction_eval_without_judge_and_bad_input(tiny_dir, belle_slice, tmp_path, capsys):
    from paddlebloom.evaluation import instruct

    path, records = belle_slice
    out = tmp_path / "plain"
    assert (
        instruct.main(
            [
                "--model_name_or_path",
                tiny_dir,
                "--eval_file",
                path,
                "--output_dir",
                str(out),
                "--max_new_tokens",
                "4",
                "--max_examples",
                "3",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in open(out / "predictions.jsonl", encoding="utf-8")]
    assert len(rows) == 3 and all("judge_score" not in r for r in rows)
    report = json.loads((out / "report.json").read_text())
    assert report["judge"] is None and report["overall"]["count"] == 3 and "mean_score" not in report["overall"]
    # tensor parallel: every rank generates, the main rank alone writes, the answers are the same
    launch(
        [
            RUN_INSTRUCT,
            "--model_name_or_path",
            tiny_dir,
            "--eval_file",
            path,
            "--output_dir",
            str(tmp_path / "tp2"),
            "--max_new_tokens",
            "4",
            "--max_examples",
            "3",
            "--tensor_parallel_degree",
            "2",
        ],
        tmp_path / "log",
    )
    assert [json.loads(line)["answer"] for line in open(tmp_path / "tp2" / "predictions.jsonl", encoding="utf-8")] == [
        r["answer"] for r in rows
    ]
    assert sorted(os.listdir(tmp_path / "tp2")) == ["predictions.jsonl", "report.json"]
    # A judge that cannot be reached: the answers are still written, each with its error, and the exit status says so.
    with FakeJudge() as gone:
        url = gone.url
    down = tmp_path / "down"
    assert (
        instruct.main(
            [
                "--model_name_or_path",
                tiny_dir,
                "--eval_file",
                path,
                "--output_dir",
                str(down),
                "--max_new_tokens",
                "2",
                "--max_examples",
                "1",
                "--judge_url",
                url,
                "--judge_retries",
                "0",
                "--judge_timeout",
                "2",
            ]
        )
        == 3
    )
    rows = [json.loads(line) for line in open(down / "predictions.jsonl", encoding="utf-8")]
    assert len(rows) == 1 and rows[0]["judge_score"] is None and "127.0.0.1" in rows[0]["judge_error"]
    assert json.loads((down / "report.json").read_text())["overall"]["judge_errors"] == 1
    assert "the judge failed on 1 of 1 answers" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(records[0], ensure_ascii=False) + "\n" + json.dumps({"question": "q", "std_answer": "a"}) + "\n",
        encoding="utf-8",
    )
    assert (
        instruct.main(
            ["--model_name_or_path", tiny_dir, "--eval_file", str(bad), "--output_dir", str(tmp_path / "never")]
        )
        == 2
    )
    assert f"run_instruct_eval.py: error: {bad}:2: field 'class' missing" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
