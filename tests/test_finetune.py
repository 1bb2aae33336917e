"""Issue 3: fine-tuning runs, follows TP=1 at TP=2, resumes exactly, and every flag is real."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import ROOT, _env, launch, run_py, shared_file
from paddlebloom.training.arguments import parse_args
from paddlebloom.training.trainer import run
from paddlebloom.weights import read_state_for_rank

SCRIPT = os.path.join(ROOT, "finetune", "finetune_generation.py")
BASE = [
    "--src_length",
    "48",
    "--tgt_length",
    "48",
    "--per_device_train_batch_size",
    "4",
    "--logging_steps",
    "1",
    "--save_steps",
    "0",
    "--disable_tqdm",
    "--seed",
    "7",
    "--learning_rate",
    "1e-3",
]


def flags(tiny_dir, out, *extra, data=None):
    data = data or shared_file("instruct", "belle_single_turn_1k.jsonl")
    return ["--model_name_or_path", tiny_dir, "--train_file", data, "--output_dir", str(out), *BASE, *extra]


def finetune(tiny_dir, out, *extra, data=None):
    return run(parse_args(flags(tiny_dir, out, *extra, data=data)))


def losses(metrics):
    return [h["loss"] for h in metrics["train_history"]]


def test_training_loss_falls_and_report_is_written(tiny_dir, tmp_path):
    metrics = finetune(tiny_dir, tmp_path / "run", "--max_steps", "25", "--lr_scheduler_type", "constant")
    curve = losses(metrics)
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.3, curve
    with open(tmp_path / "run" / "loss_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert [h["loss"] for h in saved["train_history"]] == curve
    trained = read_state_for_rank(str(tmp_path / "run"))
    original = read_state_for_rank(tiny_dir)
    assert max(np.abs(trained[k] - original[k]).max() for k in original) > 1e-3


TP_MODES = {
    "full": [],
    # dropout 0: dropout masks on row-parallel shards cannot reproduce single-process masks
    "lora": ["--lora", "--lora_dropout", "0", "--lora_target_modules", "qkv,dense,dense_h_to_4h,dense_4h_to_h"],
    "prefix": ["--prefix", "--num_prefix_tokens", "4", "--prefix_projection"],
}


ADAPTER_FILES = {
    "full": "model_state.pdparams",
    "lora": "lora_model_state.pdparams",
    "prefix": "prefix_model_state.pdparams",
}


@pytest.mark.parametrize("mode", sorted(TP_MODES))
def test_tp2_follows_tp1_loss_curve(trained_tiny, tmp_path, mode):
    extra = ["--max_steps", "10", *TP_MODES[mode]]
    one = losses(finetune(trained_tiny, tmp_path / "tp1", *extra))
    launch([SCRIPT, *flags(trained_tiny, tmp_path / "tp2", *extra), "--tensor_parallel_degree", "2"], tmp_path / "log")
    saved = json.load(open(tmp_path / "tp2" / "metrics.json"))
    assert saved["tensor_parallel_degree"] == 2 and saved["kind"] == mode
    two = [h["loss"] for h in saved["train_history"]]
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4, (one, two)
    assert max(one) - min(one) > 0.02  # the run really trains something that changes the loss
    # TP runs write one merged checkpoint / full-size adapter, equal to the single-process one
    name = ADAPTER_FILES[mode]
    a = paddle.load(str(tmp_path / "tp1" / name), return_numpy=True)
    b = paddle.load(str(tmp_path / "tp2" / name), return_numpy=True)
    assert sorted(a) == sorted(b)
    # Adam's first steps amplify round-off in near-zero gradients (lr * g / (|g| + eps)), so the
    # weights are compared against how far training moved them, not against a fixed 1e-5.
    finetune(trained_tiny, tmp_path / "init", *TP_MODES[mode], "--max_steps", "1", "--learning_rate", "0")
    start = paddle.load(str(tmp_path / "init" / name), return_numpy=True)
    moved = max(np.abs(a[k] - start[k]).max() for k in a)
    assert max(np.abs(a[k] - b[k]).max() for k in a) < 0.05 * moved, moved


def test_prefix_matters_on_a_trained_model(trained_tiny, tmp_path):
    plain = losses(finetune(trained_tiny, tmp_path / "plain", "--max_steps", "1", "--learning_rate", "0"))[0]
    prefixed = losses(
        finetune(trained_tiny, tmp_path / "prefix", "--max_steps", "1", "--learning_rate", "0", *TP_MODES["prefix"])
    )[0]
    assert abs(plain - prefixed) > 1e-2
    trained = losses(finetune(trained_tiny, tmp_path / "p3", "--max_steps", "3", *TP_MODES["prefix"]))
    recomputed = losses(
        finetune(trained_tiny, tmp_path / "p3r", "--max_steps", "3", *TP_MODES["prefix"], "--recompute")
    )
    assert trained[0] == prefixed and trained[2] != trained[0]
    assert np.allclose(trained, recomputed, atol=1e-6)  # recompute passes the prefix's gradient through


def test_kill_at_random_step_and_resume_gives_identical_weights(tiny_dir, tmp_path):
    extra = ["--max_steps", "12", "--save_steps", "3", "--save_total_limit", "2"]
    finetune(tiny_dir, tmp_path / "straight", *extra)
    kill_at = random.Random().randint(4, 11)
    cmd = [sys.executable, SCRIPT, *flags(tiny_dir, tmp_path / "killed", *extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith(f"step {kill_at}/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"run ended before step {kill_at}"
    assert not os.path.exists(tmp_path / "killed" / "model_state.pdparams")
    resumed = run_py(cmd[1:])
    assert "resumed from" in resumed.stdout
    a, b = read_state_for_rank(str(tmp_path / "straight")), read_state_for_rank(str(tmp_path / "killed"))
    assert all(np.array_equal(a[k], b[k]) for k in a), f"killed at step {kill_at}"
    ckpts = sorted(d for d in os.listdir(tmp_path / "killed") if d.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-12", "checkpoint-9"]  # --save_total_limit 2


def test_label_smoothing_changes_the_loss_as_the_formula_says(trained_tiny, tmp_path):
    from paddlebloom.data.dataset import BatchPlan, collate, load_examples
    from paddlebloom.data.templates import TEMPLATES
    from paddlebloom.loading import load_model

    eps = 0.2
    smoothed = losses(finetune(trained_tiny, tmp_path / "s", "--max_steps", "1", "--label_smoothing", str(eps)))[0]
    plain = losses(finetune(trained_tiny, tmp_path / "p", "--max_steps", "1"))[0]
    model, tok, _ = load_model(trained_tiny)
    examples = load_examples(
        [shared_file("instruct", "belle_single_turn_1k.jsonl")], tok, TEMPLATES["belle"], 48, 48, show_progress=False
    )
    ids, mask, labels = collate([examples[i] for i in BatchPlan(len(examples), 4, 1, 1, 0, 7).micro_batches(0)[0]], 3)
    logits = model(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask)).logits.numpy().astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = labels != -100
    nll = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep]
    uniform = -logp.mean(-1)[keep]
    assert abs(plain - nll.mean()) < 1e-4
    assert abs(smoothed - ((1 - eps) * nll + eps * uniform).mean()) < 1e-4
    assert abs(smoothed - plain) > 0.01  # and the flag really changes the number


def test_gradient_accumulation_equals_the_big_batch(tiny_dir, tmp_path):
    big = finetune(tiny_dir, tmp_path / "big", "--max_steps", "3", "--per_device_train_batch_size", "4")
    acc = finetune(
        tiny_dir,
        tmp_path / "acc",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
    )
    assert np.allclose(losses(big), losses(acc), atol=1e-5)
    a, b = read_state_for_rank(str(tmp_path / "big")), read_state_for_rank(str(tmp_path / "acc"))
    assert max(np.abs(a[k] - b[k]).max() for k in a) < 1e-5


def test_schedule_clipping_decay_recompute_and_seed_flags(tiny_dir, tmp_path):
    ref = finetune(
        tiny_dir,
        tmp_path / "ref",
        "--max_steps",
        "4",
        "--warmup_steps",
        "2",
        "--lr_scheduler_type",
        "cosine",
        "--max_grad_norm",
        "0",
    )
    # warmup (step + 1) / warmup, then cosine from the top: the first step already learns
    assert [round(h["lr"] / 1e-3, 6) for h in ref["train_history"]] == [0.5, 1.0, 1.0, 0.5]
    lin = finetune(tiny_dir, tmp_path / "lin", "--max_steps", "4", "--warmup_ratio", "0.25", "--max_grad_norm", "0")
    assert np.allclose([h["lr"] / 1e-3 for h in lin["train_history"]], [1.0, 1.0, 2 / 3, 1 / 3])
    clipped = finetune(
        tiny_dir,
        tmp_path / "clip",
        "--max_steps",
        "4",
        "--warmup_steps",
        "2",
        "--lr_scheduler_type",
        "cosine",
        "--max_grad_norm",
        "0.05",
    )
    assert clipped["train_history"][0]["grad_norm"] > 0.05  # the norm before clipping is reported
    assert losses(clipped)[:1] == losses(ref)[:1] and losses(clipped)[2:] != losses(ref)[2:]
    recomputed = finetune(
        tiny_dir,
        tmp_path / "rc",
        "--max_steps",
        "4",
        "--warmup_steps",
        "2",
        "--lr_scheduler_type",
        "cosine",
        "--max_grad_norm",
        "0",
        "--recompute",
    )
    assert np.allclose(losses(recomputed), losses(ref), atol=1e-5)
    decayed = finetune(
        tiny_dir,
        tmp_path / "wd",
        "--max_steps",
        "4",
        "--warmup_steps",
        "2",
        "--lr_scheduler_type",
        "cosine",
        "--max_grad_norm",
        "0",
        "--weight_decay",
        "0.5",
    )
    a, b = read_state_for_rank(str(tmp_path / "ref")), read_state_for_rank(str(tmp_path / "wd"))
    w = "bloom.h.0.mlp.dense_h_to_4h.weight"
    assert np.abs(b[w]).sum() < np.abs(a[w]).sum()
    from paddlebloom.loading import load_model
    from paddlebloom.training.optim import build_optimizer

    model, _, _ = load_model(tiny_dir)
    optimizer, _, named = build_optimizer(
        model, parse_args(flags(tiny_dir, tmp_path / "x", "--weight_decay", "0.1")), 10
    )
    decayed = sorted(n for n, p in named if optimizer._apply_decay_param_fun(p.name))
    assert len(decayed) == 1 + 4 * 2 and not any("layernorm" in n or n.endswith("bias") for n in decayed)
    other_seed = finetune(tiny_dir, tmp_path / "seed", "--max_steps", "2", "--seed", "8")
    assert losses(other_seed)[0] != losses(ref)[0]  # another data order


def test_lora_continue_and_merge_weights(tiny_dir, tmp_path):
    from paddlebloom.loading import load_model

    lora = [
        "--lora",
        "--lora_target_modules",
        "qkv,dense_4h_to_h",
        "--r",
        "4",
        "--lora_alpha",
        "8",
        "--learning_rate",
        "1e-2",
    ]
    first = finetune(tiny_dir, tmp_path / "l1", "--max_steps", "6", *lora, "--merge_weights")
    assert sorted(f for f in os.listdir(tmp_path / "l1") if f.startswith("lora_")) == [
        "lora_config.json",
        "lora_model_state.pdparams",
    ]
    cont = finetune(tiny_dir, tmp_path / "l2", "--max_steps", "2", *lora, "--lora_path", str(tmp_path / "l1"))
    fresh = finetune(tiny_dir, tmp_path / "l3", "--max_steps", "2", *lora)
    assert losses(cont)[0] != losses(fresh)[0]  # starts from the trained adapter, not from zero
    recomputed = finetune(tiny_dir, tmp_path / "l4", "--max_steps", "2", *lora, "--recompute")
    assert np.allclose(losses(recomputed), losses(fresh), atol=1e-6)  # the adapter still gets its gradient
    x = paddle.to_tensor([[5, 6, 7, 8, 9, 10]])
    unmerged, _, _ = load_model(tiny_dir, lora_path=str(tmp_path / "l1"), merge_lora=False)
    merged, _, _ = load_model(str(tmp_path / "l1" / "merged_model"))
    base, _, _ = load_model(tiny_dir)
    want = unmerged(x).logits.numpy()
    assert np.abs(want - base(x).logits.numpy()).max() > 1e-3  # the adapter does something
    np.testing.assert_allclose(merged(x).logits.numpy(), want, atol=1e-5)


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
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "warn" not in l.lower()]
    assert proc.returncode != 0
    assert lines and lines[-1].startswith("finetune_generation.py: error: ") and message in lines[-1], proc.stderr[
        -800:
    ]
    assert not out.exists()


def test_wrong_tp_degree_for_the_head_count_under_the_launcher(tmp_path):
    from paddlebloom.create_tiny import create_tiny

    odd = create_tiny(str(tmp_path / "odd"), vocab_size=600, hidden_size=48, n_head=3, n_layer=1)
    out = tmp_path / "out"
    proc = launch(
        [SCRIPT, *flags(odd, out, "--max_steps", "2"), "--tensor_parallel_degree", "2"], tmp_path / "log", check=False
    )
    assert proc.returncode != 0 and not out.exists()
    log = open(tmp_path / "log" / "workerlog.0", errors="replace").read()
    assert "finetune_generation.py: error: --tensor_parallel_degree 2 does not divide the model's n_head=3" in log


def test_tp2_shards_on_request_and_resume_at_tp2(trained_tiny, tmp_path):
    out = tmp_path / "sharded"
    constant = ["--lr_scheduler_type", "constant"]  # a run extended from 2 to 4 steps keeps its learning rate
    common = [
        SCRIPT,
        *flags(trained_tiny, out, "--save_steps", "2", "--save_shards", *constant),
        "--tensor_parallel_degree",
        "2",
    ]
    launch([*common, "--max_steps", "2"], tmp_path / "log1")
    assert sorted(f for f in os.listdir(out) if f.endswith(".pdparams")) == [
        "model_state.tp00.pdparams",
        "model_state.tp01.pdparams",
    ]
    launch([*common, "--max_steps", "4"], tmp_path / "log2")  # continues from the newest checkpoint
    assert "resumed from" in open(tmp_path / "log2" / "workerlog.0", errors="replace").read()
    assert os.path.isfile(out / "checkpoint-2" / "optimizer.tp01.pdopt")
    history = json.load(open(out / "metrics.json"))["train_history"]
    straight = losses(finetune(trained_tiny, tmp_path / "tp1", "--max_steps", "4", *constant))
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert max(abs(h["loss"] - s) for h, s in zip(history, straight)) < 1e-4


# ------------------------------------------------------------------ issue 13: PaddleNLP configs, generation metrics, data users bring


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


def test_min_new_tokens_holds_back_eos():
    from paddlebloom.engine.decoder import Sequence, StepEngine
    from paddlebloom.generation import GenerationConfig

    logits = np.zeros(10, dtype=np.float32)
    logits[2], logits[7] = 5.0, 1.0  # EOS (2) is the greedy choice
    seq = Sequence([5], GenerationConfig(max_new_tokens=4, min_new_tokens=2, eos_token_id=2))
    engine = object.__new__(StepEngine)  # choose() needs no model
    assert [engine.choose(seq, logits) for _ in range(3)] == [7, 7, None] and seq.finish_reason == "stop"


def test_do_generation_reports_paddlenlp_rouge_and_keeps_min_tgt_length(tiny_dir, tmp_path):
    from paddlenlp.metrics import Rouge1, Rouge2, RougeL

    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        "".join(open(shared_file("instruct", "belle_dev_1k.jsonl"), encoding="utf-8").readlines()[:6]), encoding="utf-8"
    )
    metrics = finetune(
        tiny_dir,
        tmp_path / "gen",
        "--max_steps",
        "1",
        "--do_eval",
        "--validation_file",
        str(dev),
        "--do_generation",
        "--tgt_length",
        "8",
        "--min_tgt_length",
        "5",
        "--per_device_eval_batch_size",
        "4",
    )
    rows = [json.loads(line) for line in open(tmp_path / "gen" / "eval_generations.jsonl", encoding="utf-8")]
    assert len(rows) == 6 and all(5 <= r["new_tokens"] <= 8 for r in rows)
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    rouge_l = RougeL()
    for p, r in zip(preds, refs):
        rouge_l.add_inst(p, [r])
    final = metrics["final_eval"]  # the reference implementation: paddlenlp.metrics on the same strings
    assert (
        abs(final["eval_rouge1"] - Rouge1().score(preds, refs)) < 1e-12
        and abs(final["eval_rouge2"] - Rouge2().score(preds, refs)) < 1e-12
    )
    assert abs(final["eval_rougel"] - rouge_l.score()) < 1e-12 and "eval_loss" in final
    from paddlebloom.evaluation.text_overlap import overlap_scores

    pairs = [("今天天气很好", "今天天气不错"), ("abcab", "abcabc"), ("", "x"), ("the cat sat", "a cat sat down")]
    ours = overlap_scores([p for p, _ in pairs], [r for _, r in pairs])
    rouge_l = RougeL()
    for p, r in pairs:
        rouge_l.add_inst(p, [r])
    assert np.allclose(
        [ours["rouge1"], ours["rouge2"], ours["rougel"]],
        [Rouge1().score(*zip(*pairs)), Rouge2().score(*zip(*pairs)), rouge_l.score()],
    )


def test_llamafactory_demo_files_train_with_loss_on_assistant_turns_only(tiny_dir, tmp_path):
    from paddlebloom.data.dataset import load_examples
    from paddlebloom.data.readers import iter_records
    from paddlebloom.data.templates import TEMPLATES
    from paddlebloom.tokenizer import BloomTokenizer

    tok = BloomTokenizer.from_pretrained(tiny_dir)
    files = [
        os.path.join(ROOT, "tests", "data", f"{name}.slice.json")
        for name in ("glaive_toolcall_en_demo", "glaive_toolcall_zh_demo", "kto_en_demo", "alpaca_en_demo")
    ]
    for path in files:
        records = [r for _, r in iter_records(path)]
        examples = load_examples([path], tok, TEMPLATES["belle"], 4096, 4096, show_progress=False)
        assert len(examples) == len(records) >= 2
        for (ids, labels), record in zip(examples, records):
            turns = record.get("conversations") or record.get("messages") or []
            answers = [
                m.get("value", m.get("content")) for m in turns if m.get("from", m.get("role")) in ("gpt", "assistant")
            ] or [record["output"]]
            assert labels[labels != -100].tolist() == [t for a in answers for t in tok.encode(a) + [tok.eos_token_id]]
    metrics = finetune(
        tiny_dir,
        tmp_path / "demo",
        "--max_steps",
        "2",
        "--train_file",
        *files,
        "--src_length",
        "256",
        "--tgt_length",
        "256",
    )
    assert len(losses(metrics)) == 2 and all(np.isfinite(losses(metrics)))


def test_do_generation_answers_with_the_prefix_as_trained_so_far(trained_tiny, tmp_path):
    from paddlebloom.data.dataset import load_examples
    from paddlebloom.data.templates import TEMPLATES
    from paddlebloom.generation import GenerationConfig, generate_ids
    from paddlebloom.loading import load_model
    from paddlebloom.training.generation_eval import last_answer

    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        "".join(open(shared_file("instruct", "belle_dev_1k.jsonl"), encoding="utf-8").readlines()[:3]), encoding="utf-8"
    )
    # evaluations after steps 1 and 2: the second must not answer with the prefix of the first
    finetune(
        trained_tiny,
        tmp_path / "p",
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--validation_file",
        str(dev),
        "--do_generation",
        "--tgt_length",
        "8",
        "--learning_rate",
        "0.3",
        *TP_MODES["prefix"],
    )
    model, tok, _ = load_model(trained_tiny, prefix_path=str(tmp_path / "p"))
    examples = load_examples([str(dev)], tok, TEMPLATES["belle"], 48, 8, show_progress=False)
    prompts = [last_answer(ids, labels, tok.eos_token_id)[0] for ids, labels in examples]
    want = [tok.decode(a) for a in generate_ids(model, prompts, GenerationConfig(max_new_tokens=8))]
    assert [
        json.loads(line)["prediction"] for line in open(tmp_path / "p" / "eval_generations.jsonl", encoding="utf-8")
    ] == want
