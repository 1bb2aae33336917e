"""Issue 14: the server as lm-evaluation-harness's `local-completions` model uses it (token-id prompts,
echo, logprobs): its LAMBADA accuracy and perplexity equal eval/run_eval.py's --cloze_eval on the same model."""

import json
import os
import subprocess

import pytest

from conftest import HF_PY, ROOT, require_hf_venv, run_py, shared_file, start_server

MODEL = "tiny"  # the served model's name (--model_name), which lm-eval's requests carry


@pytest.fixture(scope="module")
def lambada_slice(tmp_path_factory):
    """A tiny BLOOM with a tokenizer learned on LAMBADA, and records where lm-evaluation-harness's
    split (last space) and ours (last whitespace) give the same context and word, and where
    encoding context + word splits at the word (lm-eval encodes them together)."""
    from paddlebloom.create_tiny import create_tiny
    from paddlebloom.tokenizer import BloomTokenizer

    base = tmp_path_factory.mktemp("lambada")
    texts = [
        json.loads(line)["text"] for line in open(shared_file("eval", "lambada_test_first1000.jsonl"), encoding="utf-8")
    ]
    (base / "all.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    tiny = create_tiny(str(base / "tiny"), corpus=[str(base / "all.txt")], seed=0)
    tok = BloomTokenizer.from_pretrained(tiny)
    records = []
    for text in texts:
        context, word = text.rsplit(" ", 1)
        same_split = text.split() and text.split()[-1] == word and text[: text.rstrip().rfind(word)].rstrip() == context
        if (
            same_split
            and tok.encode(text) == tok.encode(context) + tok.encode(" " + word)
            and len(tok.encode(text)) < 120
        ):
            records.append(text)
        if len(records) == 24:
            break
    path = base / "slice.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in records), encoding="utf-8")
    return str(path), records, tiny


def test_lm_eval_harness_against_the_server_equals_run_eval(tmp_path, lambada_slice):
    """A model that saw these passages (so some last words are right and some wrong), served;
    lm-eval's local-completions (token-id prompts, echo, logprobs) vs eval/run_eval.py --cloze_eval."""
    require_hf_venv()
    path, records, tiny_dir = lambada_slice
    text = tmp_path / "train.txt"
    text.write_text("\n".join(records) + "\n", encoding="utf-8")
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    run_py(
        [
            os.path.join(ROOT, "finetune", "finetune_generation.py"),
            "--model_name_or_path",
            tiny_dir,
            "--train_file",
            str(text),
            "--output_dir",
            str(ckpt),
            "--src_length",
            "128",
            "--tgt_length",
            "128",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "120",
            "--learning_rate",
            "5e-3",
            "--save_steps",
            "0",
            "--logging_steps",
            "1000",
            "--disable_tqdm",
            "--seed",
            "1",
        ]
    )
    run_py(
        [
            os.path.join(ROOT, "export", "export_generation_model.py"),
            "--model_name_or_path",
            str(ckpt),
            "--output_path",
            str(export / "bloom"),
        ]
    )
    ours = json.loads(
        run_py(
            [
                os.path.join(ROOT, "eval", "run_eval.py"),
                "--model_name_or_path",
                str(ckpt),
                "--eval_path",
                path,
                "--cloze_eval",
                "--batch_size",
                "8",
                "--seq_length",
                "256",
                "--output_file",
                str(tmp_path / "ours.json"),
            ]
        ).stdout
        and (tmp_path / "ours.json").read_text()
    )

    task = tmp_path / "tasks"
    task.mkdir()
    (task / "lambada_slice.yaml").write_text(
        f"""task: lambada_slice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
        encoding="utf-8",
    )
    proc, base = start_server(str(export), "--model_name", MODEL, "--max_prompt_tokens", "256", "--max_new_tokens", "8")
    try:
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        out = subprocess.run(
            [
                HF_PY,
                "-m",
                "lm_eval",
                "--model",
                "local-completions",
                "--model_args",
                f"model={MODEL},base_url={base}/v1/completions,tokenizer={export},tokenizer_backend=huggingface,"
                "tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=256",
                "--tasks",
                "lambada_slice",
                "--include_path",
                str(task),
                "--batch_size",
                "8",
                "--output_path",
                str(tmp_path / "lm_eval"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=str(tmp_path),
        )
        assert out.returncode == 0, out.stderr[-4000:]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    found = [
        os.path.join(d, f) for d, _, files in os.walk(tmp_path / "lm_eval") for f in files if f.startswith("results")
    ]
    theirs = json.load(open(found[0]))["results"]["lambada_slice"]
    print("lm-eval:", theirs, "run_eval:", ours)
    assert 0 < ours["accuracy"] < 1, ours  # some words right, some wrong: the comparison means something
    assert theirs["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    assert theirs["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-4)
