"""The end of `make demo` (paddlebloom/demo.py): its answers scored against the held-out outputs,
summary.json written from the stages' artefacts, and the summary printed."""

import json
import os
import time


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


def write_summary(
    *,
    out: str,
    logs: str,
    started: float,
    ppl_before: float,
    ppl_pre: float,
    ppl_merged: float,
    pre: str,
    lora: str,
    dpo: str,
    dpo_before: str,
    merged: str,
    static: str,
    static_int8: str,
    answers_before: str,
    answers: str,
    answers_int8: str,
) -> dict:
    """Write OUT/summary.json from the stages' outputs (checkpoints, metrics, answer files) and print it."""
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
        f"   DPO loss            {summary['dpo']['loss'][0]:.3f} -> {summary['dpo']['loss'][1]:.3f}; "
        "held-out pairs where the right answer is "
        f"preferred: {preferred[0]:.0%} before -> {preferred[1]:.0%} after DPO   ({dpo}/dpo_rewards.png)"
    )
    print(
        f"   perplexity on held-out generated text: {ppl_before:.1f} (new) -> {ppl_pre:.1f} (pre-trained) "
        f"-> {ppl_merged:.1f} (after LoRA, merged)"
    )
    for fam in exact:
        print(
            f"   held-out '{fam}' prompts (the new instruction), exact match: "
            f"{exact_before[fam]:.0%} before LoRA -> {exact[fam]:.0%} after (static model)"
        )
    print(f"   weight-only int8 program: {same_int8:.0%} of the held-out answers identical to float32")
    with open(answers, encoding="utf-8") as f:
        for r in [json.loads(line) for line in f][:4]:
            print(f"     {r['instruction']} {r['input']!r:>24} -> {r['prediction']!r} (expected {r['output']!r})")
    print(
        f"   merged checkpoint: {merged}   static model: {static}   logs: {logs}   total {time.time() - started:.0f} s"
    )
    return summary
