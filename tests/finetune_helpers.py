"""Shared by the fine-tuning tests (test_finetune*.py): the script, the common flags, one-call runs."""

import os

from conftest import ROOT, shared_file
from paddlebloom.training.arguments import parse_args
from paddlebloom.training.trainer import run

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


TP_MODES = {
    "full": [],
    # dropout 0: dropout masks on row-parallel shards cannot reproduce single-process masks
    "lora": ["--lora", "--lora_dropout", "0", "--lora_target_modules", "qkv,dense,dense_h_to_4h,dense_4h_to_h"],
    "prefix": ["--prefix", "--num_prefix_tokens", "4", "--prefix_projection"],
}
