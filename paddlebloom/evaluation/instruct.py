"""BELLE-style instruction evaluation: answer every {question, std_answer, class}, report per class.

    python eval/run_instruct_eval.py --model_name_or_path CKPT --eval_file belle_eval_set.jsonl
        --output_dir OUT [--judge_url URL --judge_model NAME] [generation flags]

Writes OUT/predictions.jsonl (one line per record, in input order: the record, the prompt, the
answer and -- with a judge -- its score) and OUT/report.json (per class and overall: count,
mean answer length in characters and tokens, empty answers, mean judge score). Both files are
written atomically after all answers exist, by the main rank only.
"""

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from ..atomic import write_file_atomic
from ..cli import run_main
from ..data.formats import prompt_for_prediction
from ..data.readers import DataError, iter_records
from ..data.templates import get_template
from ..generation import add_generation_flags, generate_text, generation_config
from ..loading import load_model
from ..runtime import init_parallel, parallel_context, quiet, use_all_cores
from .judge import JudgeClient

FIELDS = ("question", "std_answer", "class")


def read_eval_set(path: str) -> List[Tuple[int, dict]]:
    records = []
    for line, record in iter_records(path):
        for field in FIELDS:
            value = record.get(field)
            if not isinstance(value, str) or (field != "std_answer" and not value.strip()):
                what = (
                    "missing"
                    if field not in record
                    else "must be a non-empty string"
                    if field != "std_answer"
                    else "must be a string"
                )
                raise DataError(f"{path}:{line}: field '{field}' {what}")
        records.append((line, record))
    if not records:
        raise DataError(f"{path}:1: no records")
    return records


def _summary(items: List[dict], judged: bool) -> dict:
    entry = {
        "count": len(items),
        "mean_answer_chars": sum(len(r["answer"]) for r in items) / len(items),
        "mean_answer_tokens": sum(r["answer_tokens"] for r in items) / len(items),
        "empty_answers": sum(1 for r in items if not r["answer"].strip()),
    }
    if judged:
        scores = [r["judge_score"] for r in items if r.get("judge_score") is not None]
        entry.update(
            judged=len(scores),
            judge_errors=len(items) - len(scores),
            mean_score=(sum(scores) / len(scores)) if scores else None,
        )
    return entry


def class_report(rows: List[dict], judged: bool) -> Tuple[Dict[str, dict], dict]:
    """(per class in first-seen order, overall): counts, mean answer lengths, mean judge score."""
    groups: Dict[str, List[dict]] = OrderedDict()
    for row in rows:
        groups.setdefault(row["class"], []).append(row)
    return {name: _summary(items, judged) for name, items in groups.items()}, _summary(rows, judged)


def format_table(classes: Dict[str, dict], overall: dict) -> str:
    lines = [f"{'class':<20} {'count':>6} {'chars':>8} {'tokens':>8} {'score':>7}"]
    for name, e in [*classes.items(), ("(overall)", overall)]:
        score = e.get("mean_score")
        lines.append(
            f"{name[:20]:<20} {e['count']:>6} {e['mean_answer_chars']:>8.1f} {e['mean_answer_tokens']:>8.1f} "
            f"{'-' if score is None else f'{score:.3f}':>7}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_instruct_eval.py", description=__doc__.split("\n")[0])
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path", help="LoRA adapter directory, merged into the model")
    p.add_argument("--prefix_path", help="prefix-tuning adapter directory")
    p.add_argument("--eval_file", required=True, help="JSON lines {question, std_answer, class}")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_examples", type=int, default=0, help="evaluate only the first N records (0: all)")
    p.add_argument("--batch_size", type=int, default=4, help="prompts generated together")
    p.add_argument("--tensor_parallel_degree", type=int, default=1)
    add_generation_flags(p)
    p.add_argument(
        "--judge_url", help="OpenAI-compatible endpoint (base like http://host:8000/v1, or .../chat/completions)"
    )
    p.add_argument("--judge_model", default="gpt-4o-mini", help="model name sent to the judge")
    p.add_argument(
        "--judge_api_key_env",
        default="JUDGE_API_KEY",
        help="environment variable holding the judge's API key (optional)",
    )
    p.add_argument("--judge_timeout", type=float, default=60.0, help="seconds per judge request")
    p.add_argument("--judge_retries", type=int, default=2)
    args = p.parse_args(argv)
    for name in ("batch_size", "max_new_tokens", "tensor_parallel_degree"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.max_examples < 0:
        p.error("--max_examples must be >= 0")
    return args


def _write_json(path: str, payload, lines: bool = False) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            if lines:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in payload)
            else:
                json.dump(payload, f, indent=2, ensure_ascii=False)
                f.write("\n")

    write_file_atomic(path, write)


def evaluate(args: argparse.Namespace) -> Optional[dict]:
    template = get_template(args.template)
    records = read_eval_set(args.eval_file)
    if args.max_examples:
        records = records[: args.max_examples]
    prompts = [prompt_for_prediction(r, template, where=f"{args.eval_file}:{line}") for line, r in records]
    # Build the judge before the slow part, so a bad URL or rubric fails in a second.
    judge = None
    if args.judge_url:
        judge = JudgeClient(
            args.judge_url,
            args.judge_model,
            os.environ.get(args.judge_api_key_env),
            args.judge_timeout,
            args.judge_retries,
        )
    init_parallel(args.tensor_parallel_degree)
    main_rank = parallel_context().is_main
    model, tokenizer, _ = load_model(args.model_name_or_path, args.lora_path, args.prefix_path)
    config = generation_config(args, tokenizer)
    started = time.time()
    answers: List[str] = []
    with tqdm(total=len(prompts), desc="generating", unit=" ans", disable=not main_rank, dynamic_ncols=True) as bar:
        for i in range(0, len(prompts), args.batch_size):
            answers.extend(
                generate_text(
                    model,
                    tokenizer,
                    prompts[i : i + args.batch_size],
                    config,
                    args.src_length,
                    batch_size=args.batch_size,
                )
            )
            bar.update(len(prompts[i : i + args.batch_size]))
    generation_seconds = time.time() - started
    if not main_rank:
        return None
    rows = []
    for (line, record), prompt, answer in zip(records, prompts, answers):
        rows.append(
            {
                "line": line,
                "class": record["class"],
                "question": record["question"],
                "std_answer": record["std_answer"],
                "prompt": prompt,
                "answer": answer,
                "answer_tokens": len(tokenizer.encode(answer)),
            }
        )
    failures = 0
    if judge is not None:
        for row in tqdm(rows, desc="judging", unit=" ans", dynamic_ncols=True):
            verdict = judge.judge(row["class"], row["question"], row["std_answer"], row["answer"])
            row.update(judge_score=verdict.score, judge_reason=verdict.reason)
            if verdict.error:
                row["judge_error"] = verdict.error
                failures += 1
    report = {
        "model": args.model_name_or_path,
        "lora_path": args.lora_path,
        "prefix_path": args.prefix_path,
        "eval_file": args.eval_file,
        "template": template.name,
        "generation": {
            k: getattr(config, k)
            for k in (
                "max_new_tokens",
                "decode_strategy",
                "top_k",
                "top_p",
                "temperature",
                "repetition_penalty",
                "seed",
            )
        },
        "judge": None
        if judge is None
        else {"url": judge.url, "model": judge.model, "rubric_sha256_16": judge.rubric_sha},
        "generation_seconds": round(generation_seconds, 3),
    }
    report["classes"], report["overall"] = class_report(rows, judge is not None)
    os.makedirs(args.output_dir, exist_ok=True)
    _write_json(os.path.join(args.output_dir, "predictions.jsonl"), rows, lines=True)
    _write_json(os.path.join(args.output_dir, "report.json"), report)
    print(format_table(report["classes"], report["overall"]))
    if failures:
        # The files are complete (the errors are recorded per answer), but the scores are not.
        raise JudgeFailed(
            f"the judge failed on {failures} of {len(rows)} answers (see judge_error in "
            f"{args.output_dir}/predictions.jsonl)"
        )
    return report


class JudgeFailed(RuntimeError):
    pass


def main(argv=None) -> int:
    quiet()
    use_all_cores()
    args = parse_args(argv)
    try:
        return run_main("run_instruct_eval.py", lambda: evaluate(args))
    except JudgeFailed as e:
        print(f"run_instruct_eval.py: error: {e}", file=sys.stderr)
        return 3
