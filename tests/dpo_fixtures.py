"""Shared by the DPO tests (test_dpo.py, test_dpo_data.py): the script, the template, preference
pairs of the demo's new instruction and the script's flags."""

import json
import os

from conftest import ROOT
from paddlebloom import corpus
from paddlebloom.data.templates import TEMPLATES

SCRIPT = os.path.join(ROOT, "finetune", "dpo.py")
BELLE = TEMPLATES["belle"]


def first_word_pairs(n: int, seed: int):
    """The demo's new instruction as preferences: the first word is right, another word of the list wrong."""
    out = []
    for t in corpus.instruction_tasks(n, seed=seed, families=("first_word",)):
        words = t["input"].split()
        wrong = next((w for w in words[1:] if w != words[0]), "cat" if words[0] != "cat" else "dog")
        out.append({"prompt": f"{t['instruction']}\n{t['input']}", "chosen": t["output"], "rejected": wrong})
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return str(path)


def dpo_flags(model_dir, data, out, *extra):
    return [
        "--model_name_or_path",
        model_dir,
        "--train_file",
        data,
        "--output_dir",
        str(out),
        "--src_length",
        "48",
        "--tgt_length",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "0",
        "--disable_tqdm",
        "--seed",
        "3",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "constant",
        *extra,
    ]
