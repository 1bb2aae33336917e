"""`make demo`: the whole suite on a tiny model, on the CPU, with nothing downloaded.

Every stage is the command a user would type (run as a subprocess), so the demo exercises the
real entry points: create a tiny BLOOM → pre-train it on a generated Chinese+English corpus and
instructions of two families → teach it a new instruction with LoRA at tensor-parallel degree 2
under paddle.distributed.launch (and, from the same pre-trained model, with DPO on preference
pairs) → merge to one checkpoint → export the step program (fp32 and
weight-only int8) → answer held-out prompts with paddle.inference → perplexity before and after.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

from . import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage(title: str, args, log_dir: str) -> float:
    print(f"\n== {title}", flush=True)
    started = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with open(os.path.join(log_dir, title.split()[0].lower() + ".log"), "a", encoding="utf-8") as f:
        f.write(proc.stdout)
    tail = [
        l for l in proc.stdout.splitlines() if l.startswith(("step ", "done:", "wrote", "eval loss")) or '"ppl"' in l
    ][-4:]
    print("\n".join("   " + l for l in tail), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {proc.returncode}); log in {log_dir}")
    print(f"   ({time.time() - started:.0f} s)", flush=True)
    return time.time() - started


# The demo's story: pre-training gives the tiny model general skills (the generated text, plus
# two instruction families in the chat template: repeat the words, name the last word); LoRA
# then teaches it an instruction it has never seen (name the first word, asked in Chinese).
# The new instruction is checked on held-out inputs, before and after LoRA.
SKILLS = ("repeat", "last_word")
NEW_INSTRUCTION = "first_word"


def unseen(family: str, trained, text: str, n: int, seed: int):
    """n distinct tasks of the family whose inputs appear in no training record and nowhere in the text."""
    taken = {t["input"] for t in trained}
    out = []
    for t in corpus.instruction_tasks(50 * n, seed=seed, families=(family,)):
        if t["input"] not in taken and t["input"] not in text:
            taken.add(t["input"])
            out.append(t)
    return out[:n]


def preference_pairs(tasks, seed: int):
    """The tasks as preference pairs (LLaMA-Factory's alpaca form): the right answer chosen,
    another word of the same list rejected."""
    rng = random.Random(seed)
    pairs = []
    for t in tasks:
        wrong = [w for w in t["input"].split() if w != t["output"]]
        if wrong:
            pairs.append(
                {
                    "instruction": t["instruction"],
                    "input": t["input"],
                    "chosen": t["output"],
                    "rejected": rng.choice(wrong),
                }
            )
    return pairs


def write_data(out: str, held_out: int) -> dict:
    skills = corpus.instruction_tasks(2000, seed=1, families=SKILLS)
    new = corpus.instruction_tasks(1000, seed=2, families=(NEW_INSTRUCTION,))
    # Several sentences per line, and held-out text in the same shape (one paragraph), so
    # perplexity measures the model on text like what it learned, sentence boundaries included.
    sentences = corpus.sentences(8000, seed=0) + corpus.recall_passages(4000, seed=0)
    random.Random(0).shuffle(sentences)
    text = "\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)) + "\n"
    checks = unseen(NEW_INSTRUCTION, new + skills, text, held_out, seed=777)
    paths = {
        name: os.path.join(out, name)
        for name in (
            "corpus.txt",
            "skills.json",
            "new_instruction.json",
            "held_out.jsonl",
            "eval_text.txt",
            "preferences.jsonl",
            "held_out_preferences.jsonl",
        )
    }
    with open(paths["corpus.txt"], "w", encoding="utf-8") as f:
        f.write(text)
    with open(paths["eval_text.txt"], "w", encoding="utf-8") as f:
        f.write(" ".join(corpus.sentences(300, seed=12345)) + "\n")
    for name, records in (("skills.json", skills), ("new_instruction.json", new)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False)
    with open(paths["held_out.jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in checks)
    for name, records in (
        ("preferences.jsonl", preference_pairs(new, seed=3)),
        ("held_out_preferences.jsonl", preference_pairs(checks, seed=4)),
    ):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return paths


def exact_match_by_family(answers_file: str) -> dict:
    """{family: fraction of held-out answers equal to the expected output}."""
    hits, counts = {}, {}
    with open(answers_file, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            counts[r["family"]] = counts.get(r["family"], 0) + 1
            hits[r["family"]] = hits.get(r["family"], 0) + (r["prediction"].strip() == r["output"])
    return {fam: hits[fam] / counts[fam] for fam in counts}


def same_predictions(a: str, b: str) -> float:
    """Fraction of records whose predictions are identical in two answer files."""
    with open(a, encoding="utf-8") as fa, open(b, encoding="utf-8") as fb:
        pairs = [(json.loads(x)["prediction"], json.loads(y)["prediction"]) for x, y in zip(fa, fb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def perplexity(model: str, text: str, out_file: str, log_dir: str) -> float:
    stage(
        f"Perplexity {os.path.basename(model)}",
        [
            "eval/run_eval.py",
            "--model_name_or_path",
            model,
            "--eval_path",
            text,
            "--seq_length",
            "64",
            "--overlapping_eval",
            "32",
            "--batch_size",
            "8",
            "--detokenizer",
            "none",
            "--output_file",
            out_file,
        ],
        log_dir,
    )
    with open(out_file, encoding="utf-8") as f:
        return json.load(f)["ppl"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", default="runs/demo")
    p.add_argument("--pretrain_steps", type=int, default=800)
    p.add_argument("--lora_steps", type=int, default=800)
    p.add_argument("--lora_learning_rate", default="3e-3")
    p.add_argument("--dpo_steps", type=int, default=60)
    p.add_argument("--held_out", type=int, default=40, help="held-out prompts of the new instruction")
    a = p.parse_args(argv)
    out = os.path.abspath(a.output_dir)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    started = time.time()
    data = write_data(out, a.held_out)
    base, pre, lora, merged, static, static_int8 = (
        os.path.join(out, n) for n in ("tiny", "pretrained", "lora", "merged", "inference", "inference_int8")
    )
    stage(
        "Create a tiny BLOOM",
        [
            "-m",
            "paddlebloom.create_tiny",
            "--output_dir",
            base,
            "--hidden_size",
            "128",
            "--n_layer",
            "4",
            "--n_head",
            "4",
            "--corpus",
            data["corpus.txt"],
            "--seed",
            "0",
        ],
        logs,
    )
    ppl_before = perplexity(base, data["eval_text.txt"], os.path.join(out, "ppl_before.json"), logs)
    common = [
        "--save_steps",
        "0",
        "--logging_steps",
        "100",
        "--disable_tqdm",
        "--overwrite_output_dir",
        "--warmup_steps",
        "10",
    ]
    stage(
        "Pre-train on the generated corpus and skills",
        [
            "finetune/finetune_generation.py",
            "--model_name_or_path",
            base,
            "--train_file",
            data["corpus.txt"],
            data["skills.json"],
            "--output_dir",
            pre,
            "--src_length",
            "48",
            "--tgt_length",
            "48",
            "--per_device_train_batch_size",
            "16",
            "--max_steps",
            str(a.pretrain_steps),
            "--learning_rate",
            "3e-3",
            *common,
        ],
        logs,
    )
    answers_before = os.path.join(out, "answers_before_lora.jsonl")
    stage(
        "Ask the pre-trained model the held-out prompts",
        [
            "predict/predict_generation.py",
            "--model_name_or_path",
            pre,
            "--data_file",
            data["held_out.jsonl"],
            "--output_file",
            answers_before,
            "--max_new_tokens",
            "12",
            "--batch_size",
            "25",
        ],
        logs,
    )
    # Preference tuning from the same pre-trained model: the new instruction again, now taught
    # by pairs (right answer chosen, another word of the list rejected) instead of demonstrations.
    dpo_before, dpo = os.path.join(out, "dpo_before"), os.path.join(out, "dpo")
    dpo_flags = [
        "finetune/dpo.py",
        "--model_name_or_path",
        pre,
        "--validation_file",
        data["held_out_preferences.jsonl"],
        "--src_length",
        "48",
        "--tgt_length",
        "16",
        "--beta",
        "0.5",
        "--disable_tqdm",
        "--overwrite_output_dir",
    ]
    stage(
        "Preference accuracy of the pre-trained model on held-out pairs",
        [*dpo_flags, "--do_eval", "--output_dir", dpo_before],
        logs,
    )
    stage(
        "DPO on the preference pairs",
        [
            *dpo_flags,
            "--train_file",
            data["preferences.jsonl"],
            "--do_train",
            "--do_eval",
            "--output_dir",
            dpo,
            "--per_device_train_batch_size",
            "16",
            "--max_steps",
            str(a.dpo_steps),
            "--learning_rate",
            "3e-3",
            "--warmup_steps",
            "5",
            "--save_steps",
            "0",
            "--logging_steps",
            "20",
        ],
        logs,
    )
    stage(
        "LoRA: teach the new instruction at TP=2",
        [
            "-m",
            "paddle.distributed.launch",
            "--log_dir",
            os.path.join(logs, "launch"),
            "--nproc_per_node",
            "2",
            "finetune/finetune_generation.py",
            "--model_name_or_path",
            pre,
            "--train_file",
            data["new_instruction.json"],
            "--output_dir",
            lora,
            "--src_length",
            "48",
            "--tgt_length",
            "16",
            "--per_device_train_batch_size",
            "16",
            "--max_steps",
            str(a.lora_steps),
            "--learning_rate",
            a.lora_learning_rate,
            "--lora",
            "--lora_rank",
            "16",
            "--lora_alpha",
            "32",
            "--lora_dropout",
            "0",
            "--lora_target_modules",
            "qkv,dense,dense_h_to_4h,dense_4h_to_h",
            "--tensor_parallel_degree",
            "2",
            *common,
        ],
        logs,
    )
    stage(
        "Merge LoRA into one checkpoint",
        [
            "predict/predict_generation.py",
            "--model_name_or_path",
            pre,
            "--lora_path",
            lora,
            "--save_onepiece_model_path",
            merged,
        ],
        logs,
    )
    stage(
        "Export the step program",
        [
            "export/export_generation_model.py",
            "--model_name_or_path",
            merged,
            "--output_path",
            os.path.join(static, "bloom"),
        ],
        logs,
    )
    answers = os.path.join(out, "answers.jsonl")
    stage(
        "Answer held-out prompts with paddle.inference",
        [
            "deploy/infer_generation.py",
            "--model_dir",
            static,
            "--data_file",
            data["held_out.jsonl"],
            "--output_file",
            answers,
            "--max_new_tokens",
            "12",
            "--batch_size",
            "25",
        ],
        logs,
    )
    stage(
        "Export with weight-only int8",
        [
            "export/export_generation_model.py",
            "--model_name_or_path",
            merged,
            "--output_path",
            os.path.join(static_int8, "bloom"),
            "--quant_type",
            "weight_only_int8",
        ],
        logs,
    )
    answers_int8 = os.path.join(out, "answers_int8.jsonl")
    stage(
        "Answer them with the int8 program",
        [
            "deploy/infer_generation.py",
            "--model_dir",
            static_int8,
            "--data_file",
            data["held_out.jsonl"],
            "--output_file",
            answers_int8,
            "--max_new_tokens",
            "12",
            "--batch_size",
            "25",
        ],
        logs,
    )
    ppl_pre = perplexity(pre, data["eval_text.txt"], os.path.join(out, "ppl_pretrained.json"), logs)
    ppl_merged = perplexity(merged, data["eval_text.txt"], os.path.join(out, "ppl_merged.json"), logs)
    pre_hist = json.load(open(os.path.join(pre, "metrics.json")))["train_history"]
    lora_hist = json.load(open(os.path.join(lora, "metrics.json")))["train_history"]
    dpo_metrics, dpo_start = (json.load(open(os.path.join(d, "metrics.json"))) for d in (dpo, dpo_before))
    preferred = [m["final_eval"]["eval_preference_accuracy"] for m in (dpo_start, dpo_metrics)]
    exact_before, exact = exact_match_by_family(answers_before), exact_match_by_family(answers)
    same_int8 = same_predictions(answers, answers_int8)
    summary = {
        "pretrain_loss": [pre_hist[0]["loss"], pre_hist[-1]["loss"]],
        "lora_loss": [lora_hist[0]["loss"], lora_hist[-1]["loss"]],
        "ppl": {"new": ppl_before, "pretrained": ppl_pre, "merged": ppl_merged},
        "held_out_exact_match_before_lora": exact_before,
        "held_out_exact_match": exact,
        "int8_answers_equal_fp32": same_int8,
        "dpo": {
            "loss": [dpo_metrics["train_history"][0]["loss"], dpo_metrics["train_history"][-1]["loss"]],
            "held_out_preference_accuracy": preferred,
            "held_out_reward_accuracy": dpo_metrics["final_eval"]["eval_rewards/accuracies"],
        },
        "artefacts": {
            "dpo_rewards": os.path.join(dpo, "dpo_rewards.png"),
            "merged": merged,
            "static": static,
            "static_int8": static_int8,
            "answers": answers,
            "answers_int8": answers_int8,
            "loss_curves": [os.path.join(pre, "loss_curve.png"), os.path.join(lora, "loss_curve.png")],
        },
        "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print("\n== Summary")
    print(f"   pre-training loss   {pre_hist[0]['loss']:.3f} -> {pre_hist[-1]['loss']:.3f}   ({pre}/loss_curve.png)")
    print(f"   LoRA (TP=2) loss    {lora_hist[0]['loss']:.3f} -> {lora_hist[-1]['loss']:.3f}   ({lora}/loss_curve.png)")
    print(
        f"   DPO loss            {summary['dpo']['loss'][0]:.3f} -> {summary['dpo']['loss'][1]:.3f}; held-out pairs where the right answer is "
        f"preferred: {preferred[0]:.0%} before -> {preferred[1]:.0%} after DPO   ({dpo}/dpo_rewards.png)"
    )
    print(
        f"   perplexity on held-out generated text: {ppl_before:.1f} (new) -> {ppl_pre:.1f} (pre-trained) -> {ppl_merged:.1f} (after LoRA, merged)"
    )
    for fam in exact:
        print(
            f"   held-out '{fam}' prompts (the new instruction), exact match: {exact_before[fam]:.0%} before LoRA -> {exact[fam]:.0%} after (static model)"
        )
    print(f"   weight-only int8 program: {same_int8:.0%} of the held-out answers identical to float32")
    with open(answers, encoding="utf-8") as f:
        for r in [json.loads(l) for l in f][:4]:
            print(f"     {r['instruction']} {r['input']!r:>24} -> {r['prediction']!r} (expected {r['output']!r})")
    print(
        f"   merged checkpoint: {merged}   static model: {static}   logs: {logs}   total {time.time() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
