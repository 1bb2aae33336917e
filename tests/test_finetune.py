"""Issue 3: fine-tuning runs and its flags do what they say (loss falls, label smoothing, gradient
accumulation, schedule, clipping, decay, recompute, seed, prefix, LoRA continue and merge, and the
LLaMA-Factory demo files users bring).

Tensor parallel and resume: test_finetune_tp_resume.py; the command line and its errors:
test_finetune_cli.py; generation during evaluation: test_finetune_generation.py."""

import json
import os

import numpy as np
import paddle
from finetune_helpers import TP_MODES, finetune, flags, losses

from conftest import ROOT, shared_file
from paddlebloom.training.arguments import parse_args
from paddlebloom.weights import read_state_for_rank


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
    finetune(tiny_dir, tmp_path / "l1", "--max_steps", "6", *lora, "--merge_weights")
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
