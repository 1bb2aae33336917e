"""Issue 9: perplexity and LAMBADA agree with a plain-numpy BLOOM, windows score every token once,
TP=2 equals TP=1, data-parallel ranks agree, and `make run_eval` runs the documented commands.

The instruction eval and its OpenAI-compatible judge: test_instruct_eval.py."""

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest
from numpy_bloom import NumpyBloom

from conftest import ROOT, launch, run_py, shared_file
from paddlebloom.config import BloomConfig
from paddlebloom.evaluation import run_lm
from paddlebloom.evaluation.wikitext import count_original_words, detokenize_wikitext
from paddlebloom.evaluation.windows import plan_windows
from paddlebloom.tokenizer import BloomTokenizer
from paddlebloom.weights import read_state_for_rank

RUN_EVAL = os.path.join(ROOT, "eval", "run_eval.py")
REL = 1e-4


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def ref(tiny_dir):
    return NumpyBloom(read_state_for_rank(tiny_dir), BloomConfig.load(tiny_dir).n_head), BloomTokenizer.from_pretrained(
        tiny_dir
    )


def reference_nll(model, tokens, seq_length, stride):
    """Sum of -log p(token_t | its window) for t = 1..n-1, from the closed form of the windowing:
    target t is scored in the window starting at 0 if t <= seq_length, else at the first multiple
    of `stride` whose window reaches t. Returns (nll, scored, max context seen)."""
    by_start = {}
    for t in range(1, len(tokens)):
        start = 0 if t <= seq_length else math.ceil((t - seq_length) / stride) * stride
        by_start.setdefault(start, []).append(t)
    nll, scored, widest = 0.0, 0, 0
    for start, targets in by_start.items():
        logp = model.log_probs(tokens[start : targets[-1]])
        for t in targets:
            assert 1 <= t - start <= seq_length
            nll -= logp[t - start - 1, tokens[t]]
            scored += 1
            widest = max(widest, t - start)
    return nll, scored, widest


def evaluate_here(args):
    return run_lm.evaluate(run_lm.parse_args(args))


# ------------------------------------------------------------------ detokeniser and windows


def test_wikitext_detokenizer_undoes_the_markup():
    raw = (
        " = = Career = = \n It is 1 @,@ 000 km @-@ long , and 3 @.@ 5 m ( 24 in ) wide ;"
        " the city 's \" big \" road don 't end . \n"
    )
    assert (
        detokenize_wikitext(raw)
        == " == Career ==\nIt is 1,000 km-long, and 3.5 m (24 in) wide; the city's \"big\" road don't end.\n"
    )
    assert count_original_words(" a b\n c ") == 3  # Megatron's count: split on single spaces of the raw text


@pytest.mark.parametrize(
    "n,seq,stride",
    [(2, 4, 1), (10, 4, 1), (10, 4, 4), (11, 4, 3), (100, 16, 5), (5, 16, 8), (1000, 64, 64), (1001, 64, 7)],
)
def test_windows_score_every_token_exactly_once(n, seq, stride):
    counts = np.zeros(n, dtype=int)
    for i, w in enumerate(plan_windows(n, seq, stride)):
        assert 1 <= w.length <= seq and w.start == i * stride
        assert w.first_scored == 0 if i == 0 else w.first_scored >= 0
        for j in range(w.first_scored, w.length):
            counts[w.start + 1 + j] += 1
            context = j + 1
            assert context <= seq and context >= min(w.start + 1 + j, seq - stride + 1)
    assert counts[0] == 0 and (counts[1:] == 1).all()


def test_window_plan_rejects_bad_settings():
    for args in ((10, 4, 5), (10, 4, 0), (1, 4, 2)):
        with pytest.raises(ValueError):
            plan_windows(*args)


def test_short_file_every_token_scored_once_end_to_end(tiny_dir, ref, tmp_path):
    model, tok = ref
    text = "Alice has a red cat that lives in Paris.\nBob has a dog. 小红有一只住在北京的红色的猫。 The end, for now!\n"
    path = tmp_path / "short.txt"
    path.write_text(text, encoding="utf-8")
    tokens = tok.encode(text)
    assert 20 < len(tokens) < 200
    for seq, stride in ((8, 3), (8, 8), (5, 1)):
        got = evaluate_here(
            [
                "--model_name_or_path",
                tiny_dir,
                "--eval_path",
                str(path),
                "--seq_length",
                str(seq),
                "--overlapping_eval",
                str(stride),
                "--batch_size",
                "3",
            ]
        )
        nll, scored, widest = reference_nll(model, tokens, seq, stride)
        assert (
            got["num_tokenized_tokens"] == len(tokens)
            and got["num_scored_tokens"] == scored == len(tokens) - 1
            and widest == seq
        )
        assert rel(got["total_nll"], nll) < REL, (seq, stride, got["total_nll"], nll)


# ------------------------------------------------------------------ WikiText and LAMBADA vs numpy


@pytest.fixture(scope="module")
def wiki_slice(tmp_path_factory):
    lines = open(shared_file("eval", "wikitext-2-valid.txt"), encoding="utf-8").readlines()[:40]
    path = tmp_path_factory.mktemp("wiki") / "wikitext-2-valid-head.txt"  # the name selects the detokeniser
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


WIKI_ARGS = ["--seq_length", "64", "--overlapping_eval", "32", "--batch_size", "8"]


@pytest.fixture(scope="module")
def wiki_tp1(tiny_dir, wiki_slice):
    return evaluate_here(["--model_name_or_path", tiny_dir, "--eval_path", wiki_slice, *WIKI_ARGS])


def test_wikitext_ppl_matches_numpy_forward(wiki_tp1, wiki_slice, ref):
    model, tok = ref
    raw = open(wiki_slice, encoding="utf-8").read()
    tokens = tok.encode(detokenize_wikitext(raw))
    nll, scored, _ = reference_nll(model, tokens, 64, 32)
    words = len(raw.strip().split(" "))
    assert wiki_tp1["detokenized"] and wiki_tp1["num_tokenized_tokens"] == len(tokens) > 2000
    assert wiki_tp1["num_scored_tokens"] == scored == len(tokens) - 1 and wiki_tp1["num_original_words"] == words
    assert rel(wiki_tp1["ppl"], math.exp(nll / scored)) < REL
    assert rel(wiki_tp1["adjusted_ppl"], math.exp(nll / (words - 1))) < REL
    assert 100 < wiki_tp1["ppl"] < 2000 * 1.5  # a random tiny model: near-uniform over its 2000 tokens


@pytest.fixture(scope="module")
def cloze_file(ref, tmp_path_factory):
    """50 real LAMBADA records plus 6 built so the tiny model's greedy guess is right (a random
    model gets none of the real ones), so accuracy is neither 0 nor 1 and can disagree."""
    model, tok = ref
    texts = [
        json.loads(line)["text"] for line in open(shared_file("eval", "lambada_test_first1000.jsonl"), encoding="utf-8")
    ][:120]
    built = []
    for text in texts[50:]:
        context = " ".join(text.split()[:20])
        guess = int(model.logits(tok.encode(context))[-1].argmax())
        word = tok.decode([guess])
        if word.startswith(" ") and word[1:] and not any(c.isspace() for c in word[1:]) and tok.encode(word) == [guess]:
            built.append(context + word)
        if len(built) == 6:
            break
    assert len(built) == 6
    path = tmp_path_factory.mktemp("lambada") / "lambada_slice.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:50] + built), encoding="utf-8")
    return str(path)


CLOZE_ARGS = ["--cloze_eval", "--seq_length", "1024", "--batch_size", "8"]


@pytest.fixture(scope="module")
def cloze_tp1(tiny_dir, cloze_file):
    return evaluate_here(["--model_name_or_path", tiny_dir, "--eval_path", cloze_file, *CLOZE_ARGS])


def test_lambada_accuracy_and_ppl_match_numpy_forward(cloze_tp1, cloze_file, ref):
    model, tok = ref
    correct, nll, n_target = 0, 0.0, 0
    for line in open(cloze_file, encoding="utf-8"):
        text = json.loads(line)["text"]
        word = text.split()[-1]
        context, target = tok.encode(text[: text.rstrip().rfind(word)].rstrip()), tok.encode(" " + word)
        logp = model.log_probs(context + target[:-1])[len(context) - 1 :]
        correct += int(all(logp[i].argmax() == t for i, t in enumerate(target)))
        nll -= sum(logp[i, t] for i, t in enumerate(target))
        n_target += len(target)
    assert cloze_tp1["num_examples"] == 56 and cloze_tp1["num_target_tokens"] == n_target
    assert cloze_tp1["num_correct"] == correct and 6 <= correct < 56
    assert rel(cloze_tp1["accuracy"], correct / 56) < REL
    assert (
        rel(cloze_tp1["ppl"], math.exp(nll / 56)) < REL and rel(cloze_tp1["token_ppl"], math.exp(nll / n_target)) < REL
    )


# ------------------------------------------------------------------ tensor parallel and CLI


def test_tp2_results_equal_tp1(tiny_dir, wiki_slice, cloze_file, wiki_tp1, cloze_tp1, tmp_path):
    for name, eval_path, extra, tp1 in (
        ("wiki", wiki_slice, WIKI_ARGS, wiki_tp1),
        ("cloze", cloze_file, CLOZE_ARGS, cloze_tp1),
    ):
        out = tmp_path / f"{name}.json"
        launch(
            [
                RUN_EVAL,
                "--model_name_or_path",
                tiny_dir,
                "--eval_path",
                eval_path,
                *extra,
                "--tensor_parallel_degree",
                "2",
                "--output_file",
                str(out),
            ],
            tmp_path / f"log_{name}",
        )
        tp2 = json.loads(out.read_text())
        assert tp2["tensor_parallel_degree"] == 2 and tp2["data_parallel_degree"] == 1
        for key, value in tp1.items():
            if key in ("seconds", "per_second", "tensor_parallel_degree"):
                continue
            if isinstance(value, float):
                assert rel(tp2[key], value) < 1e-5, (name, key, tp2[key], value)
            else:
                assert tp2[key] == value, (name, key)
    assert sorted(os.listdir(tmp_path)) == ["cloze.json", "log_cloze", "log_wiki", "wiki.json"]  # no stray temporaries


def test_cli_writes_results_and_rejects_bad_input(tiny_dir, tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "one two three four"}\n', encoding="utf-8")
    out = tmp_path / "res.json"
    proc = run_py(
        [
            RUN_EVAL,
            "--model_name_or_path",
            tiny_dir,
            "--eval_path",
            str(good),
            "--cloze_eval",
            "--output_file",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["num_examples"] == 1 and '"accuracy"' in proc.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one two three"}\n\n{"text": "lonely"}\n', encoding="utf-8")
    for args, message in (
        ([str(bad), "--cloze_eval"], f"{bad}:3: field 'text'"),
        ([str(tmp_path / "missing.txt")], "missing.txt:0: file not found"),
    ):
        result = tmp_path / "never.json"
        code = run_lm.main(["--model_name_or_path", tiny_dir, "--eval_path", *args, "--output_file", str(result)])
        assert code == 2 and not result.exists()
    proc = run_py(
        [
            RUN_EVAL,
            "--model_name_or_path",
            tiny_dir,
            "--eval_path",
            str(bad),
            "--cloze_eval",
            "--output_file",
            str(tmp_path / "n.json"),
        ],
        check=False,
    )
    ours = [
        line for line in proc.stderr.splitlines() if line.startswith("run_eval.py")
    ]  # Paddle's import may warn first
    assert proc.returncode == 2 and ours == [
        f"run_eval.py: error: {bad}:3: field 'text' needs at least two words (a context and a target)"
    ]
    assert "Traceback" not in proc.stderr
    proc = run_py(
        [
            RUN_EVAL,
            "--model_name_or_path",
            tiny_dir,
            "--eval_path",
            str(good),
            "--seq_length",
            "8",
            "--overlapping_eval",
            "9",
        ],
        check=False,
    )
    assert proc.returncode == 2 and "--overlapping_eval 9 is larger than --seq_length 8" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "ok.jsonl", "res.json"]


def test_data_parallel_ranks_split_the_work_and_agree(tiny_dir, cloze_file, cloze_tp1, tmp_path):
    out = tmp_path / "dp.json"
    launch(
        [RUN_EVAL, "--model_name_or_path", tiny_dir, "--eval_path", cloze_file, *CLOZE_ARGS, "--output_file", str(out)],
        tmp_path / "log",
    )
    dp = json.loads(out.read_text())
    assert dp["data_parallel_degree"] == 2 and dp["tensor_parallel_degree"] == 1
    assert dp["num_correct"] == cloze_tp1["num_correct"] and rel(dp["ppl"], cloze_tp1["ppl"]) < 1e-6


# ------------------------------------------------------------------ make targets


def run_make_eval(makefile, target, out, wiki, cloze):
    """`make TARGET` on the slices; -o keeps make from reinstalling the venv mid-test."""
    args = [
        "make",
        "-f",
        makefile,
        "-o",
        ".venv/.installed",
        target,
        f"EVAL_OUT={out}",
        f"WIKITEXT={wiki}",
        f"LAMBADA={cloze}",
        "EVAL_SEQ_LENGTH=64",
        "EVAL_OVERLAP=32",
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_make_run_eval_runs_the_documented_commands(tiny_dir, wiki_slice, cloze_file, wiki_tp1, tmp_path):
    makefile = os.path.join(ROOT, "Makefile")
    text = open(makefile, encoding="utf-8").read()
    assert re.search(r"^run_eval:", text, re.M) and re.search(r"^run_eval_tps:", text, re.M), (
        "Makefile lacks the run_eval targets"
    )
    out = tmp_path / "eval"
    run_make_eval(makefile, "run_eval", out, wiki_slice, cloze_file)
    wiki, cloze = json.loads((out / "wikitext.json").read_text()), json.loads((out / "lambada.json").read_text())
    # make builds the same tiny checkpoint as the fixture (create_tiny's defaults, seed 0).
    assert wiki["num_scored_tokens"] == wiki_tp1["num_scored_tokens"] and rel(wiki["ppl"], wiki_tp1["ppl"]) < 1e-6
    direct = evaluate_here(
        ["--model_name_or_path", tiny_dir, "--eval_path", cloze_file, "--cloze_eval", "--seq_length", "64"]
    )
    assert (
        cloze["num_correct"] == direct["num_correct"]
        and rel(cloze["ppl"], direct["ppl"]) < 1e-6
        and cloze["seq_length"] == 64
    )
