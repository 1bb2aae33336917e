"""`make demo`: the whole suite on a tiny model, on the CPU, with nothing downloaded.

Every stage is the command a user would type (run as a subprocess), so the demo exercises the
real entry points: create a tiny BLOOM → pre-train it on a generated Chinese+English corpus →
instruction-tune it with LoRA at tensor-parallel degree 2 under paddle.distributed.launch →
merge to one checkpoint → answer held-out prompts → perplexity before and after.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from . import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage(title: str, args, log_dir: str) -> float:
    print(f"\n== {title}", flush=True)
    started = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(os.path.join(log_dir, title.split()[0].lower() + ".log"), "a", encoding="utf-8") as f:
        f.write(proc.stdout)
    tail = [l for l in proc.stdout.splitlines() if l.startswith(("step ", "done:", "wrote", "eval loss")) or '"ppl"' in l][-4:]
    print("\n".join("   " + l for l in tail), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {proc.returncode}); log in {log_dir}")
    return time.time() - started


def write_data(out: str) -> dict:
    tasks = corpus.instruction_tasks(2000, seed=1)
    seen = {(t["instruction"], t["input"]) for t in tasks}
    held_out = [t for t in corpus.instruction_tasks(400, seed=777) if (t["instruction"], t["input"]) not in seen][:10]
    paths = {"corpus": os.path.join(out, "corpus.txt"), "train": os.path.join(out, "instructions.json"),
             "held_out": os.path.join(out, "held_out.jsonl"), "eval_text": os.path.join(out, "eval_text.txt")}
    # Several sentences per line, and held-out text in the same shape (one paragraph), so
    # perplexity measures the model on text like what it learned, sentence boundaries included.
    sentences = corpus.sentences(8000, seed=0)
    with open(paths["corpus"], "w", encoding="utf-8") as f:
        f.write("\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)) + "\n")
    with open(paths["eval_text"], "w", encoding="utf-8") as f:
        f.write(" ".join(corpus.sentences(300, seed=12345)) + "\n")
    with open(paths["train"], "w", encoding="utf-8") as f:
        json.dump(tasks, f, ensure_ascii=False)
    with open(paths["held_out"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in held_out)
    return paths


def perplexity(model: str, text: str, out_file: str, log_dir: str) -> float:
    stage(f"Perplexity {os.path.basename(model)}", ["eval/run_eval.py", "--model_name_or_path", model, "--eval_path", text, "--seq_length", "64",
                                                    "--overlapping_eval", "32", "--batch_size", "8", "--detokenizer", "none", "--output_file", out_file], log_dir)
    with open(out_file, encoding="utf-8") as f:
        return json.load(f)["ppl"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", default="runs/demo")
    p.add_argument("--pretrain_steps", type=int, default=200)
    p.add_argument("--lora_steps", type=int, default=120)
    a = p.parse_args(argv)
    out = os.path.abspath(a.output_dir)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    started = time.time()
    data = write_data(out)
    base, pre, lora, merged = (os.path.join(out, n) for n in ("tiny", "pretrained", "lora", "merged"))
    stage("Create a tiny BLOOM", ["-m", "paddlebloom.create_tiny", "--output_dir", base, "--hidden_size", "128", "--n_layer", "4", "--n_head", "4",
                                  "--corpus", data["corpus"], "--seed", "0"], logs)
    ppl_before = perplexity(base, data["eval_text"], os.path.join(out, "ppl_before.json"), logs)
    common = ["--save_steps", "0", "--logging_steps", "40", "--disable_tqdm", "--overwrite_output_dir", "--warmup_steps", "10"]
    stage("Pre-train on the generated corpus", ["finetune/finetune_generation.py", "--model_name_or_path", base, "--train_file", data["corpus"],
                                                "--output_dir", pre, "--src_length", "48", "--tgt_length", "48", "--per_device_train_batch_size", "16",
                                                "--max_steps", str(a.pretrain_steps), "--learning_rate", "3e-3", *common], logs)
    stage("LoRA instruction tuning at TP=2", ["-m", "paddle.distributed.launch", "--log_dir", os.path.join(logs, "launch"), "--nproc_per_node", "2",
                                              "finetune/finetune_generation.py", "--model_name_or_path", pre, "--train_file", data["train"], "--output_dir", lora,
                                              "--src_length", "48", "--tgt_length", "16", "--per_device_train_batch_size", "16", "--max_steps", str(a.lora_steps),
                                              "--learning_rate", "5e-3", "--lora", "--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0",
                                              "--lora_target_modules", "qkv,dense,dense_h_to_4h,dense_4h_to_h", "--tensor_parallel_degree", "2", *common], logs)
    stage("Merge LoRA into one checkpoint", ["predict/predict_generation.py", "--model_name_or_path", pre, "--lora_path", lora, "--save_onepiece_model_path", merged], logs)
    answers = os.path.join(out, "answers.jsonl")
    stage("Answer held-out prompts", ["predict/predict_generation.py", "--model_name_or_path", merged, "--data_file", data["held_out"], "--output_file", answers,
                                      "--max_new_tokens", "12", "--batch_size", "10"], logs)
    ppl_pre = perplexity(pre, data["eval_text"], os.path.join(out, "ppl_pretrained.json"), logs)
    ppl_merged = perplexity(merged, data["eval_text"], os.path.join(out, "ppl_merged.json"), logs)
    pre_hist = json.load(open(os.path.join(pre, "metrics.json")))["train_history"]
    lora_hist = json.load(open(os.path.join(lora, "metrics.json")))["train_history"]
    results = [json.loads(l) for l in open(answers, encoding="utf-8")]
    exact = sum(r["prediction"].strip() == r["output"] for r in results)
    print("\n== Summary")
    print(f"   pre-training loss   {pre_hist[0]['loss']:.3f} -> {pre_hist[-1]['loss']:.3f}   ({pre}/loss_curve.png)")
    print(f"   LoRA (TP=2) loss    {lora_hist[0]['loss']:.3f} -> {lora_hist[-1]['loss']:.3f}   ({lora}/loss_curve.png)")
    print(f"   perplexity on held-out generated text: {ppl_before:.1f} (new) -> {ppl_pre:.1f} (pre-trained) -> {ppl_merged:.1f} (instruction-tuned, merged)")
    print(f"   held-out answers: {exact}/{len(results)} exact ({answers})")
    for r in results[:4]:
        print(f"     {r['instruction']} {r['input']!r:>24} -> {r['prediction']!r} (expected {r['output']!r})")
    print(f"   merged checkpoint: {merged}   logs: {logs}   total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
