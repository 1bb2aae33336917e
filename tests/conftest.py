"""Shared test fixtures: tiny checkpoints built on the spot, subprocess and launcher helpers."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
HF_PY = os.path.join(ROOT, ".venv-hf", "bin", "python")  # the peer: Hugging Face transformers on torch
sys.path.insert(0, ROOT)

from paddlebloom.workarounds import prefer_avx2_mkl_on_amd  # noqa: E402

# The test process is an entry point too: it computes in-process and compares with the scripts
# it starts (they inherit this), so like them it sets MKL up before its first MKL routine.
prefer_avx2_mkl_on_amd()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_minloglevel", "2")
    return env


def run_py(args, check=True, timeout=600, **kw):
    """Run `python ARGS` in the repo; return the CompletedProcess (text)."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def launch(args, log_dir, nproc=2, check=True, timeout=600):
    """Run ARGS under `python -m paddle.distributed.launch --nproc_per_node NPROC` (gloo on CPU)."""
    cmd = ["-m", "paddle.distributed.launch", "--log_dir", str(log_dir), "--nproc_per_node", str(nproc), *args]
    proc = run_py(cmd, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        logs = ""
        for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
            with open(os.path.join(log_dir, name), errors="replace") as f:
                logs += f"--- {name}\n" + f.read()[-3000:]
        raise AssertionError(f"launch {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-2000:]}\n{logs}")
    return proc


def start_server(model_dir, *flags):
    """deploy/serve.py on a free loopback port; returns (process, base URL) once it listens."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "deploy", "serve.py"), "--model_dir", model_dir, "--port", "0", *flags],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise AssertionError(f"serve.py did not start: {line}{proc.stderr.read()[-3000:]}")
    return proc, line.split(" on ")[1].split()[0].rstrip("/")


def require_hf_venv():
    """The peer venv (.venv-hf): CI always has it (fail there), a developer may not (skip)."""
    if not os.path.exists(HF_PY):
        if os.environ.get("CI") == "true":
            raise AssertionError("the peer venv is missing: make test builds it (make hf-venv)")
        pytest.skip("no .venv-hf (make hf-venv)")


def shared_file(*parts):
    """A file from ../shared/data: CI always has it (fail there), a developer may not (skip)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{path} is missing on CI")
        pytest.skip(f"{path} not present on this machine")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from paddlebloom.create_tiny import create_tiny

    return create_tiny(str(tmp_path_factory.mktemp("ckpt") / "tiny"), seed=0)


@pytest.fixture(scope="session")
def trained_tiny(tiny_dir, tmp_path_factory):
    """The tiny model after a short pre-training on the generated corpus: weights that matter,
    so adapters and prefixes visibly change its outputs (a random tiny model barely reacts)."""
    from paddlebloom import corpus
    from paddlebloom.training.arguments import parse_args
    from paddlebloom.training.trainer import run

    base = tmp_path_factory.mktemp("trained")
    text = base / "corpus.txt"
    text.write_text("\n".join(corpus.sentences(3000, seed=1)) + "\n", encoding="utf-8")
    out = base / "model"
    run(
        parse_args(
            [
                "--model_name_or_path",
                tiny_dir,
                "--train_file",
                str(text),
                "--output_dir",
                str(out),
                "--src_length",
                "24",
                "--tgt_length",
                "24",
                "--per_device_train_batch_size",
                "16",
                "--max_steps",
                "80",
                "--learning_rate",
                "5e-3",
                "--lr_scheduler_type",
                "constant",
                "--save_steps",
                "0",
                "--logging_steps",
                "1000",
                "--disable_tqdm",
                "--seed",
                "1",
            ]
        )
    )
    return str(out)


@pytest.fixture(scope="session")
def exported_tiny(trained_tiny, tmp_path_factory):
    """trained_tiny exported through export/export_generation_model.py (what users run), once per session."""
    out = tmp_path_factory.mktemp("inference") / "base"
    run_py(
        [
            os.path.join(ROOT, "export", "export_generation_model.py"),
            "--model_name_or_path",
            trained_tiny,
            "--output_path",
            str(out / "bloom"),
        ]
    )
    return str(out)
