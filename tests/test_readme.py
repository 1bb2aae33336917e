"""The README's commands run as written.

Every command in a ```bash block is executed, in README order, in a scratch directory laid out like
a clone (the scripts, `.venv`, `../shared`), with tiny stand-ins for the files a user brings
(`data.json`, `belle.jsonl`, a Hugging Face `bloom-560m` ...). `make` commands are checked to be
real targets (`make -n`; the demo and the test suite have their own tests). Commands that need
GPUs, several nodes or a model hub live in ```shell blocks: their scripts must exist, but they
are not run. Optional flags written `[--...]` are left out.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import HF_PY, ROOT, SHARED_DATA

FENCE = re.compile(r"^```(bash|shell)\n(.*?)^```", re.S | re.M)
LINKED = [
    "finetune",
    "predict",
    "export",
    "deploy",
    "eval",
    "bench",
    "paddlebloom",
    "tests",
    "Makefile",
    "setup.py",
    "requirements.txt",
    ".venv",
]


def readme_commands():
    """[(fence language, argv)] in README order; continuation lines joined, comments and [optional] parts dropped."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    out = []
    for lang, body in FENCE.findall(text):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(re.sub(r"\[--[^\]]*\]", " ", line), comments=True)
            if argv:
                out.append((lang, argv))
    return out


def user_files(work, tiny_dir):
    """The files README commands take from the user, as small real ones."""
    from paddlebloom import corpus

    tasks = corpus.instruction_tasks(40, seed=3)
    with open(work / "data.json", "w", encoding="utf-8") as f:
        json.dump([{k: t[k] for k in ("instruction", "input", "output")} for t in tasks], f, ensure_ascii=False)
    with open(work / "in.jsonl", "w", encoding="utf-8") as f:
        f.writelines(
            json.dumps({"instruction": t["instruction"], "input": t["input"]}, ensure_ascii=False) + "\n"
            for t in tasks[:4]
        )
    with open(work / "belle.jsonl", "w", encoding="utf-8") as f:
        f.writelines(
            json.dumps(
                {"instruction": f"{t['instruction']} {t['input']}".strip(), "output": t["output"]}, ensure_ascii=False
            )
            + "\n"
            for t in tasks[:24]
        )
    with open(
        work / "pairs.jsonl", "w", encoding="utf-8"
    ) as f:  # preference pairs: the right answer and another task's
        f.writelines(
            json.dumps(
                {"prompt": f"{t['instruction']}\n{t['input']}", "chosen": t["output"], "rejected": u["output"]},
                ensure_ascii=False,
            )
            + "\n"
            for t, u in zip(tasks, tasks[5:])
            if t["output"] != u["output"]
        )
    (work / "zh.txt").write_text("\n".join(corpus.sentences(200, seed=4)) + "\n", encoding="utf-8")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:  # the README's example config, as written there
        (work / "lora_argument.json").write_text(
            re.search(r"^```json\n(.*?)^```", f.read(), re.S | re.M).group(1), encoding="utf-8"
        )
    # A Hugging Face-format BLOOM (safetensors, tokenizer.json) written by transformers itself.
    subprocess.run(
        [
            HF_PY,
            os.path.join(ROOT, "tests", "workers", "hf_bloom.py"),
            str(work / "bloom-560m"),
            tiny_dir,
            str(work / "hf_ref.npz"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def scratch_clone(tmp_path):
    """tmp/work looks like a clone (scripts and .venv linked) with tmp/shared beside it."""
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), work / name)
    if os.path.isdir(SHARED_DATA):
        os.symlink(os.path.dirname(SHARED_DATA), tmp_path / "shared")
    return work


def start_server(argv, work, env):
    """Popen of the README's serve command on a free loopback port (its .port), once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    server = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server.port = port
    deadline = time.time() + 180
    while time.time() < deadline:
        assert server.poll() is None, f"README server exited: {' '.join(argv)}\n{server.stderr.read()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise AssertionError(f"README server never answered /health: {' '.join(argv)}")


def run_command(lang, argv, work, env, servers):
    if lang == "shell":  # GPU / multi-node / hub: the script it names must exist
        scripts = [a for a in argv if a.endswith(".py")]
        assert all(os.path.exists(os.path.join(ROOT, s)) for s in scripts), (
            f"README names a missing script: {' '.join(argv)}"
        )
        return
    if argv[0] == "make":
        proc = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"README: `{' '.join(argv)}` is not a valid make command: {proc.stderr}"
        return
    if any(a.endswith("deploy/serve.py") for a in argv):  # a server: start it; the curl lines after it talk to it
        servers.append(start_server(argv, work, env))
        return
    if argv[0] == "curl":
        assert servers, f"README: {' '.join(argv)} comes before any server is started"
        argv = [a.replace("localhost:8080", f"127.0.0.1:{servers[-1].port}") for a in argv]
    # Interactive commands (chat) get one question and /exit on stdin.
    proc = subprocess.run(
        argv, cwd=work, env=env, input="Alice has a red\n/exit\n", capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"README command failed (exit {proc.returncode}): "
        f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    if argv[0] == "curl":
        assert '"choices"' in proc.stdout or "data: " in proc.stdout, proc.stdout[:500]


def test_every_readme_command_runs(tiny_dir, tmp_path):
    if not os.path.exists(HF_PY):
        pytest.skip("no .venv-hf (make hf-venv)")
    commands = readme_commands()
    ran = [argv for lang, argv in commands if lang == "bash" and argv[0] != "make"]
    assert len(ran) >= 12, f"only {len(ran)} runnable commands found in README.md: is the fence parser broken?"
    if any("../shared" in a for argv in ran for a in argv) and not os.path.isdir(SHARED_DATA):
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{SHARED_DATA} is missing on CI")
        pytest.skip("../shared/data is not on this machine")
    work = scratch_clone(tmp_path)
    user_files(work, tiny_dir)
    env = dict(os.environ, GLOG_minloglevel="2")
    servers = []
    try:
        for lang, argv in commands:
            run_command(lang, argv, work, env, servers)
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=30)
    # The commands did what the README says they do, not just exit 0.
    promised = [
        "runs/full/model_state.pdparams",
        "runs/lora/lora_model_state.pdparams",
        "runs/prefix/prefix_model_state.pdparams",
        "runs/merged/model_state.pdparams",
        "inference/bloom.json",
        "bloom-560m-paddle/config.json",
        "runs/pruned/vocab_map.json",
        "runs/from_config/lora_model_state.pdparams",
        "runs/dpo_lora/lora_model_state.pdparams",
        "runs/dpo_lora/dpo_rewards.png",
    ]
    assert [p for p in promised if not (work / p).exists()] == []
    with open(work / "out.jsonl", encoding="utf-8") as f:
        assert [bool(json.loads(line)["prediction"]) for line in f] == [True] * 4
