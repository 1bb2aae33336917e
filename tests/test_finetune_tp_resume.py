"""Issue 3: fine-tuning at TP=2 follows TP=1 (loss curve and saved weights), resumes exactly after a
kill at a random step, shards on request and resumes at TP=2, and rejects a TP degree the heads do not allow."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest
from finetune_helpers import SCRIPT, TP_MODES, finetune, flags, losses

from conftest import ROOT, _env, launch, run_py
from paddlebloom.weights import read_state_for_rank

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
