"""Issue 13: every command line of PaddleNLP's BLOOM example (../shared/seeds/003_...) runs here.

The commands are read from the seed's ```shell/```bash blocks, not copied, so the seed itself is the
acceptance list: a flag dropped from one of our parsers fails this test. Each runs where a user
would run the example, a directory holding the scripts, `./data/` (train.json/dev.json, the
WikiText and LAMBADA paths the seed names) and `bigscience/bloom-560m` (our tiny model: there is
no hub here). Only these are substituted:
  model paths   "/path/to/auto_dist/pdparams" -> auto_dist{rank}.pdparams files we write; `make run_eval*`
                get MODEL=bigscience/bloom-560m (instead of building their own tiny model);
  data paths    `make run_eval*`'s WIKITEXT/LAMBADA point at the same small slices;
  step counts   2 optimizer steps (--max_steps 2), --gradient_accumulation_steps/--save_steps/--eval_steps 2,
                so checkpoint-20 is checkpoint-2;
  GPU flags     --gpus LIST -> --nproc_per_node 2 and --tensor_parallel_degree N -> 2 (2 CPU processes);
                --fp16 dropped and --dtype bfloat16 -> float32 (no CPU kernels: the one-line errors
                they give instead are checked in test_finetune and below).
Commands that read what an earlier one wrote run in that one's directory, as a user would; the
independent chains run two at a time.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, SHARED_DATA, _env, shared_file

SEED = os.path.join(os.path.dirname(SHARED_DATA), "seeds", "003_7a06112d4c794c5f.txt")
FENCE = re.compile(r"^```(?:shell|bash)\n(.*?)^```", re.S | re.M)
SCRIPTS = {
    "finetune_generation.py": "finetune",
    "predict_generation.py": "predict",
    "export_generation_model.py": "export",
    "infer_generation.py": "deploy",
    "run_eval.py": "eval",
}
PROMPTS = "Alice has a red\n三加四等于多少？\n"


def seed_commands(text):
    """argv of each command in the shell blocks. A line ending in a backslash continues; so does an
    indented line of flags after a command line without one (the seed's LoRA/prefix predict and
    export commands lack the backslashes; in a shell they would run as separate, failing lines)."""
    commands = []
    for block in FENCE.findall(text):
        current = None
        for raw in block.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if current is not None and (current.endswith("\\") or (raw[:1].isspace() and line.startswith("--"))):
                current = current.rstrip("\\") + " " + line
                continue
            if current is not None:
                commands.append(current)
            current = line
        if current is not None:
            commands.append(current)
    return [shlex.split(c.rstrip("\\")) for c in commands]


def on_this_machine(argv, autodist_dir):
    """The substitutions of the module docstring, nothing else."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--gpus":
            out += ["--nproc_per_node", "2"]
            i += 2
            continue
        if arg == "--tensor_parallel_degree":
            out += [arg, "2"]
            i += 2
            continue
        if arg in ("--gradient_accumulation_steps", "--save_steps", "--eval_steps"):
            out += [arg, "2"]
            i += 2
            continue
        if arg == "--dtype" and value == "bfloat16":
            out += [arg, "float32"]
            i += 2
            continue
        if arg == "--fp16":
            i += 1
            continue
        out.append(arg.replace("checkpoint-20", "checkpoint-2").replace("/path/to/auto_dist/pdparams", autodist_dir))
        i += 1
    if any(a.endswith("finetune_generation.py") for a in out):
        out += ["--max_steps", "2"]
    if out[0] == "make":
        out[1:1] = ["-o", ".venv/.installed"]  # the venv is there: do not reinstall it mid-test
        out += [
            "WIKITEXT=data/wikitext-103/wiki.valid.tokens",
            "LAMBADA=data/lambada_test.jsonl",
            "MODEL=bigscience/bloom-560m",
        ]
    return out


def example_dir(path, tiny_dir):
    """A directory laid out like PaddleNLP's example: scripts side by side, ./data, the model."""
    os.makedirs(path / "data" / "wikitext-103")
    for script, folder in SCRIPTS.items():
        os.symlink(os.path.join(ROOT, folder, script), path / script)
    for name in ("Makefile", "paddlebloom", "eval", ".venv"):  # what `make run_eval*` runs
        os.symlink(os.path.join(ROOT, name), path / name)
    os.makedirs(path / "bigscience")
    os.symlink(tiny_dir, path / "bigscience" / "bloom-560m")
    belle = open(shared_file("instruct", "belle_single_turn_1k.jsonl"), encoding="utf-8").readlines()
    (path / "data" / "train.json").write_text("".join(belle[:24]), encoding="utf-8")
    (path / "data" / "dev.json").write_text("".join(belle[100:108]), encoding="utf-8")
    wiki = open(shared_file("eval", "wikitext-2-valid.txt"), encoding="utf-8").readlines()[
        :8
    ]  # < 1024 tokens: one window of the default length
    (path / "data" / "wikitext-103" / "wiki.valid.tokens").write_text("".join(wiki), encoding="utf-8")
    lambada = open(shared_file("eval", "lambada_test_first1000.jsonl"), encoding="utf-8").readlines()[:16]
    (path / "data" / "lambada_test.jsonl").write_text("".join(lambada), encoding="utf-8")
    return path


def run(argv, cwd, expect_ok=True, stdin=""):
    env = _env()
    env["PATH"] = (
        os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    )  # the venv is active: `python` is its python
    cmd = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
    proc = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=900)
    log = ""
    for name in ("log/workerlog.0", "our_log/workerlog.0"):
        if os.path.exists(os.path.join(cwd, name)):
            log += open(os.path.join(cwd, name), errors="replace").read()[-3000:]
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} (in {cwd}) exited "
            f"{proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{log}"
        )
    return proc


def write_autodist(tiny_dir, directory, degree):
    """PaddleNLP's 176B layout made with our own split: auto_dist{rank}.pdparams, one tensor-parallel shard each."""
    from paddlebloom.weights import autodist_name, read_state_for_rank, save_weights, split_for_rank

    os.makedirs(directory)
    for name in os.listdir(tiny_dir):
        if not name.endswith(".pdparams"):
            shutil.copy(os.path.join(tiny_dir, name), directory)
    full = read_state_for_rank(tiny_dir)
    for rank in range(degree):
        save_weights(split_for_rank(full, degree, rank), os.path.join(directory, autodist_name(rank)))
    return str(directory)


def last_json(text):
    """The last pretty-printed JSON object of a run's output (run_eval.py prints its results)."""
    return json.loads(re.findall(r"^\{$.*?^\}$", text, re.S | re.M)[-1])


def worker_output(cwd):
    path = os.path.join(cwd, "log", "workerlog.0")
    text = open(path, encoding="utf-8", errors="replace").read()
    os.remove(path)  # the next launch from here starts a fresh log
    return text


@pytest.mark.skipif(not os.path.exists(SEED), reason="the seed is not on this machine")
def test_every_command_of_the_paddlenlp_bloom_example_runs(tiny_dir, tmp_path):
    commands = seed_commands(open(SEED, encoding="utf-8").read())
    assert len(commands) == 17, [shlex.join(c) for c in commands]
    script = lambda c: next((a for a in c if a in SCRIPTS), c[0])  # noqa: E731
    finetune_tp, finetune_tp_20, finetune_lora, finetune_prefix = (
        c for c in commands if script(c) == "finetune_generation.py"
    )
    predict_merge, predict_save, predict_lora, predict_prefix = (
        c for c in commands if script(c) == "predict_generation.py"
    )
    export_save, export_lora = (c for c in commands if script(c) == "export_generation_model.py")
    (deploy,) = (c for c in commands if script(c) == "infer_generation.py")
    evals = [c for c in commands if script(c) in ("make", "run_eval.py")]
    assert [c[0] for c in evals] == ["make", "python", "make", "python", "python", "python"]
    dirs = {name: example_dir(tmp_path / name, tiny_dir) for name in ("tp", "tp20", "lora", "prefix", "make", "eval")}
    fix = lambda c: on_this_machine(c, str(dirs["eval"] / "auto_dist"))  # noqa: E731

    def chain_tp():
        run(fix(finetune_tp), dirs["tp"])
        metrics = json.load(open(dirs["tp"] / "checkpoints" / "bloom-560m" / "metrics.json"))
        assert (
            metrics["tensor_parallel_degree"] == 2
            and len(metrics["train_history"]) == 2
            and "eval_loss" in metrics["final_eval"]
        )

    def chain_tp20():
        d = dirs["tp20"]
        run(fix(finetune_tp_20), d)
        assert (d / "checkpoints" / "bloom-560m" / "checkpoint-2").is_dir()
        run(fix(predict_merge), d)  # TP=2 -> one piece in ./save
        assert (d / "save" / "model_state.pdparams").is_file()
        out = run(fix(predict_save), d, stdin=PROMPTS).stdout.splitlines()
        assert [json.loads(line)["prompt"] for line in out] == PROMPTS.splitlines()
        run(fix(export_save), d)
        assert (d / "inference" / "bloom.json").is_file()

    def chain_lora():
        d = dirs["lora"]
        run(fix(finetune_lora), d)
        assert (d / "checkpoints" / "bloom-560m" / "lora_model_state.pdparams").is_file()
        out = run(fix(predict_lora), d, stdin=PROMPTS).stdout.splitlines()
        assert len(out) == 2 and all("prediction" in json.loads(line) for line in out)
        run(fix(export_lora), d)
        out = run(fix(deploy), d, stdin=PROMPTS).stdout.splitlines()  # deploys the last export (the LoRA one)
        assert [json.loads(line)["prompt"] for line in out] == PROMPTS.splitlines()

    def chain_prefix():
        d = dirs["prefix"]
        run(fix(finetune_prefix), d)
        assert (d / "checkpoints" / "bloom-560m" / "prefix_model_state.pdparams").is_file()
        assert len(run(fix(predict_prefix), d, stdin=PROMPTS).stdout.splitlines()) == 2

    make_eval, wiki_tp1, make_eval_tps, wiki_tp2, cloze_tp1, autodist_tp2 = evals

    def chain_make():
        d = dirs["make"]
        run(fix(make_eval), d)
        run(fix(make_eval_tps), d)
        made, made_tp2 = (json.load(open(d / "runs" / "eval" / f)) for f in ("wikitext.json", "wikitext_tp2.json"))
        assert (
            made["num_scored_tokens"] == made_tp2["num_scored_tokens"]
            and abs(made["ppl"] - made_tp2["ppl"]) < 1e-4 * made["ppl"]
        )

    def chain_eval():
        d = dirs["eval"]
        write_autodist(tiny_dir, d / "auto_dist", 2)
        wiki = last_json(run(fix(wiki_tp1), d).stdout)
        run(
            fix(wiki_tp2), d
        )  # the launcher runs `python run_eval.py` (the seed's stray `python` is the program it starts)
        tp2 = last_json(worker_output(d))
        assert (
            tp2["tensor_parallel_degree"] == 2
            and abs(tp2["ppl"] - wiki["ppl"]) < 1e-5 * wiki["ppl"]
            and tp2["model"] == "bigscience/bloom-560m"
        )
        cloze = last_json(run(fix(cloze_tp1), d).stdout)
        run(fix(autodist_tp2), d)  # auto_dist0/1.pdparams, one per rank
        auto = last_json(worker_output(d))
        assert (
            auto["tensor_parallel_degree"] == 2
            and auto["num_correct"] == cloze["num_correct"]
            and abs(auto["ppl"] - cloze["ppl"]) < 1e-5 * cloze["ppl"]
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [
            pool.submit(f) for f in (chain_eval, chain_tp20, chain_make, chain_lora, chain_tp, chain_prefix)
        ]:
            future.result()


@pytest.mark.skipif(not os.path.exists(SEED), reason="the seed is not on this machine")
def test_every_seed_flag_is_parsed(tmp_path):
    """Fast and precise: each seed command's flags through its script's own parser (argparse exits
    on a flag it does not know), before anything runs."""
    from paddlebloom import predict
    from paddlebloom.deploy import cli as deploy_cli
    from paddlebloom.evaluation import run_lm
    from paddlebloom.training import arguments

    parsers = {
        "finetune_generation.py": lambda a: arguments.build_parser().parse_args(a),
        "predict_generation.py": lambda a: predict.build_parser().parse_args(a),
        "run_eval.py": run_lm.parse_args,
        "infer_generation.py": deploy_cli.parse_args,
    }
    parsed = 0
    for argv in seed_commands(open(SEED, encoding="utf-8").read()):
        argv = on_this_machine(argv, str(tmp_path))
        name = next((a for a in argv if a in parsers), None)
        if name:
            parsers[name](argv[argv.index(name) + 1 :])
            parsed += 1
    assert parsed == 4 + 4 + 4 + 1


def test_run_eval_paddlenlp_flags_model_type_dtype_and_autodist(tiny_dir, tmp_path):
    from paddlebloom.evaluation import run_lm

    cloze = tmp_path / "lambada.jsonl"
    cloze.write_text(
        "".join(open(shared_file("eval", "lambada_test_first1000.jsonl"), encoding="utf-8").readlines()[:24]),
        encoding="utf-8",
    )
    auto = write_autodist(tiny_dir, tmp_path / "auto", 2)
    flags = ["--eval_path", str(cloze), "--cloze_eval", "--batch_size", "8"]
    plain = run_lm.evaluate(run_lm.parse_args(["--model_name_or_path", tiny_dir, *flags]))
    merged = run_lm.evaluate(
        run_lm.parse_args(["--model_type", "bloom", "--model_name_or_path", auto, *flags, "--load_autodist"])
    )
    assert (
        merged["num_correct"] == plain["num_correct"] and abs(merged["ppl"] - plain["ppl"]) < 1e-6 * plain["ppl"]
    )  # two shards merged for one process
    run_eval = os.path.join(ROOT, "eval", "run_eval.py")
    for extra, message in (
        (
            ["--load_autodist", "--dtype", "bfloat16"],
            "--dtype bfloat16: this device (cpu) has no bfloat16 matmul kernel",
        ),
        (
            [],
            "no weights (model_state.pdparams, model.safetensors or tensor-parallel shards) (auto_dist{rank}.pdparams "
            "files are read with --load_autodist)",
        ),
        (["--load_autodist", "--model_type", "gpt"], "argument --model_type: invalid choice: 'gpt'"),
    ):
        proc = subprocess.run(
            [
                sys.executable,
                run_eval,
                "--model_name_or_path",
                auto,
                *flags,
                *extra,
                "--output_file",
                str(tmp_path / "never.json"),
            ],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-500:]
    os.remove(os.path.join(auto, "auto_dist0.pdparams"))
    with pytest.raises(FileNotFoundError, match=r"auto_dist0.pdparams is missing \(found ranks \[1\]\)"):
        run_lm.evaluate(run_lm.parse_args(["--model_name_or_path", auto, *flags, "--load_autodist"]))
    assert not (tmp_path / "never.json").exists()
