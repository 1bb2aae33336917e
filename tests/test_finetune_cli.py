"""Issue 3 and 13: the fine-tuning command line: every PaddleNLP flag is accepted, malformed input fails
in one line and writes nothing, and a PaddleNLP JSON config equals the same flags (later flags win)."""

import json
import os

import numpy as np
import paddle
import pytest
from finetune_helpers import SCRIPT, finetune, flags, losses

from conftest import launch, run_py, shared_file


def test_every_flag_is_accepted_in_paddlenlp_spelling(tiny_dir, tmp_path):
    dev = shared_file("instruct", "belle_dev_1k.jsonl")
    small_dev = tmp_path / "dev.jsonl"
    small_dev.write_text("".join(open(dev, encoding="utf-8").readlines()[:16]), encoding="utf-8")
    out = tmp_path / "all"
    proc = run_py(
        [
            SCRIPT,
            "--model_name_or_path",
            tiny_dir,
            "--data_path",
            shared_file("instruct", "belle_single_turn_1k.jsonl"),
            "--validation_file",
            str(small_dev),
            "--output_dir",
            str(out),
            "--max_input_length",
            "32",
            "--max_output_length",
            "32",
            "--num_train_epochs",
            "1",
            "--max_steps",
            "4",
            "--learning_rate",
            "3e-4",
            "--warmup_ratio",
            "0.1",
            "--weight_decay",
            "0.01",
            "--label_smoothing",
            "0.1",
            "--lr_scheduler_type",
            "linear",
            "--per_device_train_batch_size",
            "2",
            "--per_device_eval_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "2",
            "--max_grad_norm",
            "1.0",
            "--logging_steps",
            "1",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--save_total_limit",
            "1",
            "--do_train",
            "True",
            "--do_eval",
            "True",
            "--fp16",
            "False",
            "--bf16",
            "False",
            "--fp16_opt_level",
            "O2",
            "--scale_loss",
            "1024",
            "--recompute",
            "True",
            "--tensor_parallel_degree",
            "1",
            "--seed",
            "3",
            "--lora",
            "True",
            "--r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_dropout",
            "0.1",
            "--lora_target_modules",
            "query_key_value,dense",
            "--merge_weights",
            "False",
            "--prefix",
            "False",
            "--num_prefix_tokens",
            "8",
            "--prefix_projection",
            "False",
            "--disable_tqdm",
        ]
    )
    metrics = json.load(open(out / "metrics.json"))
    assert len(metrics["train_history"]) == 4 and len(metrics["eval_history"]) == 2 and "final_eval" in metrics
    assert "eval loss" in proc.stdout and [d for d in os.listdir(out) if d.startswith("checkpoint-")] == [
        "checkpoint-4"
    ]
    assert all(h["grad_norm"] > 0 for h in metrics["train_history"])


MALFORMED = {
    "bad JSON": ('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', [], "bad.jsonl:2: invalid JSON"),
    "missing field": ('{"instruction": "a"}\n', [], "bad.jsonl:1: missing field 'output'"),
    "empty file": ("", [], "bad.jsonl:1: empty file"),
    "unknown format": ('{"question_text": "a"}\n', [], "bad.jsonl:1: unknown format"),
    "src_length below the template": (None, ["--src_length", "3"], "cannot hold the 'belle' template"),
    "TP degree without processes": (None, ["--tensor_parallel_degree", "3"], "needs 3 processes"),
    "missing model dir": (
        None,
        ["--model_name_or_path", "/nonexistent/bloom"],
        "/nonexistent/bloom: model directory not found",
    ),
    "fp16 on CPU": (None, ["--fp16"], "--fp16 needs a GPU"),
    "lora and prefix": (None, ["--lora", "--prefix"], "cannot be combined"),
    "conversation out of order": (
        '{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}\n',
        [],
        "two human turns",
    ),
    "LoRA target matching nothing": (None, ["--lora", "--lora_target_modules", "attention_xyz"], "matches no layer"),
    "negative learning rate": (None, ["--learning_rate", "-1"], "--learning_rate must be >= 0, got -1.0"),
    "data not UTF-8": (
        b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n',
        [],
        "bad.jsonl:2: not UTF-8 text (byte 0xe9)",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_fails_in_one_line_and_writes_nothing(tiny_dir, tmp_path, case):
    content, extra, message = MALFORMED[case]
    data = None
    if content is not None:
        (tmp_path / "bad.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        data = str(tmp_path / "bad.jsonl")
    out = tmp_path / "out"
    args = flags(tiny_dir, out, "--max_steps", "2", data=data or shared_file("instruct", "belle_single_turn_1k.jsonl"))
    args += extra  # later flags win
    proc = run_py([SCRIPT, *args], check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
    assert proc.returncode != 0
    assert lines and lines[-1].startswith("finetune_generation.py: error: ") and message in lines[-1], proc.stderr[
        -800:
    ]
    assert not out.exists()


def test_json_config_equals_the_same_flags_and_later_flags_win(tiny_dir, tmp_path):
    data = shared_file("instruct", "belle_single_turn_1k.jsonl")
    lora = ["--lora", "--r", "4", "--lora_dropout", "0"]
    by_flags = finetune(tiny_dir, tmp_path / "flags", "--max_steps", "3", *lora)
    config = {
        "model_name_or_path": tiny_dir,
        "train_file": [data],
        "output_dir": str(tmp_path / "json"),
        "src_length": 48,
        "tgt_length": 48,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 0,
        "disable_tqdm": True,
        "seed": 7,
        "learning_rate": 1e-3,
        "max_steps": 5,
        "lora": True,
        "r": 4,
        "lora_dropout": 0,
        "prefix_tuning": False,
        "validation_file": None,
    }
    path = tmp_path / "lora_argument.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    run_py([SCRIPT, str(path), "--max_steps", "3"])  # a flag after the file overrides it
    assert losses(json.load(open(tmp_path / "json" / "metrics.json"))) == losses(by_flags)
    a, b = (paddle.load(str(tmp_path / d / "lora_model_state.pdparams"), return_numpy=True) for d in ("flags", "json"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)  # the same final weights
    # under the launcher too (TP=2 follows TP=1)
    launch(
        [SCRIPT, str(path), "--output_dir", str(tmp_path / "tp2"), "--max_steps", "3", "--tensor_parallel_degree", "2"],
        tmp_path / "log",
    )
    assert np.allclose(losses(json.load(open(tmp_path / "tp2" / "metrics.json"))), losses(by_flags), atol=1e-4)
    path.write_text(
        json.dumps({**config, "output_dir": str(tmp_path / "never"), "evaluation_strategy": "epoch"}, indent=2),
        encoding="utf-8",
    )
    line = 1 + path.read_text(encoding="utf-8").split('"evaluation_strategy"')[0].count("\n")
    proc = run_py([SCRIPT, str(path)], check=False)
    assert (
        proc.returncode == 2
        and f"finetune_generation.py: error: {path}:{line}: unknown key 'evaluation_strategy'" in proc.stderr
    )
    assert not (tmp_path / "never").exists()
