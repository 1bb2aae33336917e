"""Batch prediction and merging to one checkpoint (predict/predict_generation.py).

Prediction reads records of any training format, generates from their prompts and writes them
back with a `prediction` field (the records' own `output` stays as it was: it is the
reference). A bad line is reported by number and skipped; the run still ends non-zero.
Without --data_file (and without --save_onepiece_model_path) each stdin line is one raw prompt,
as for deploy/infer_generation.py, and the predictions go to stdout as JSON lines.
Under `python -m paddle.distributed.launch --nproc_per_node N` the model runs at TP=N.
"""

import argparse
import json
import os
import sys
import time
from typing import List, Tuple

from tqdm import tqdm

from .adapter import adapter_of
from .atomic import write_output
from .cli import run_main
from .data.formats import FORMATS, prompt_for_prediction
from .data.readers import DataError, iter_records, iter_text_lines, parse_json_line, stdin_prompts
from .data.templates import get_template
from .generation import add_generation_flags, encode_prompts, generate_ids, generation_config
from .loading import load_model, resolve_model_dir
from .runtime import init_parallel, parallel_context, quiet, use_all_cores, world_size


def read_prompts(path: str, template, data_format) -> Tuple[List[Tuple[int, dict, str]], List[str]]:
    """(line, record, prompt) of every good record, and one message per bad line."""
    good, bad = [], []
    if path.endswith(".jsonl"):
        if not os.path.isfile(path):
            raise DataError(f"{path}:0: file not found")
        for n, line in iter_text_lines(path):  # text that is not UTF-8 stops the run here, naming its line
            if not line.strip():
                continue
            try:
                record = parse_json_line(line, path, n)
                good.append((n, record, prompt_for_prediction(record, template, data_format, where=f"{path}:{n}")))
            except DataError as e:
                bad.append(str(e))
    else:
        for n, record in iter_records(path):
            try:
                good.append((n, record, prompt_for_prediction(record, template, data_format, where=f"{path}:{n}")))
            except DataError as e:
                bad.append(str(e))
    return good, bad


def predict(args) -> int:
    quiet()
    use_all_cores()
    init_parallel(args.tensor_parallel_degree or world_size())
    from_stdin = not args.data_file and not args.save_onepiece_model_path
    if from_stdin and world_size() > 1:
        raise ValueError(
            "prompts are read from stdin in one process only; under the launcher give --data_file (with --output_file)"
        )
    if args.data_file and not args.output_file:
        raise ValueError("--data_file needs --output_file")
    template = get_template(args.template)
    prompts, bad = read_prompts(args.data_file, template, args.data_format) if args.data_file else ([], [])
    if from_stdin:  # as PaddleNLP's example predicts without a data file; here the prompts are yours, one per line
        if sys.stdin.isatty():
            print("reading prompts from stdin, one per line (end with Ctrl-D)", file=sys.stderr)
        prompts = stdin_prompts(sys.stdin)
    model, tokenizer, _ = load_model(args.model_name_or_path, args.lora_path, args.prefix_path)
    if args.save_onepiece_model_path:  # one ordinary checkpoint (LoRA folded in by load_model), a prefix beside it
        adapter_of(model).save_merged(model, args.save_onepiece_model_path, resolve_model_dir(args.model_name_or_path))
        if parallel_context().is_main:
            print(f"wrote one-piece checkpoint {args.save_onepiece_model_path}")
    if args.data_file or from_stdin:
        gen = generation_config(args, tokenizer)
        outputs, n_tokens, start = [], 0, time.time()
        show = parallel_context().is_main
        for i in tqdm(range(0, len(prompts), args.batch_size), desc="predicting", disable=not show, unit=" batch"):
            chunk = prompts[i : i + args.batch_size]
            tic = time.time()
            new = generate_ids(model, encode_prompts(tokenizer, [p for _, _, p in chunk], args.src_length), gen)
            n_tokens += sum(len(t) for t in new)
            outputs += [
                dict(record if record is not None else {"prompt": p}, prediction=tokenizer.decode(t))
                for (_, record, p), t in zip(chunk, new)
            ]
            if show:
                tqdm.write(
                    f"batch {i // args.batch_size + 1}: {len(chunk)} prompts, {sum(len(t) for t in new)} tokens in "
                    f"{time.time() - tic:.2f} s",
                    file=sys.stdout if args.output_file else sys.stderr,
                )  # stdout may carry the predictions
        if show:
            write_output("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs), args.output_file)
            elapsed = time.time() - start
            print(
                f"{len(outputs)} predictions, {n_tokens} new tokens in {elapsed:.1f} s: "
                f"{n_tokens / max(elapsed, 1e-9):.1f} tokens/s -> {args.output_file or 'stdout'}",
                file=sys.stdout if args.output_file else sys.stderr,
            )
    for message in bad if parallel_context().is_main else []:
        print(f"predict_generation.py: skipped {message}", file=sys.stderr)
    if bad:
        raise DataError(f"{len(bad)} bad line(s) in {args.data_file}, first: {bad[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict with BLOOM (dynamic graph) and/or merge to one checkpoint.")
    p.add_argument("--model_name_or_path", required=True, help="a checkpoint, or tensor-parallel shards")
    p.add_argument("--lora_path")
    p.add_argument("--prefix_path")
    p.add_argument(
        "--data_file",
        help="records of any training format (JSON lines or a JSON array); "
        "without it (and without --save_onepiece_model_path) each stdin line is one raw prompt",
    )
    p.add_argument("--output_file", help="JSON lines out (default with stdin prompts: stdout)")
    p.add_argument("--data_format", choices=FORMATS)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--tensor_parallel_degree", type=int, default=0, help="default: the number of launched processes")
    p.add_argument(
        "--save_onepiece_model_path", help="write one merged checkpoint here (LoRA folded in, prefix alongside)"
    )
    add_generation_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("predict_generation.py", lambda: predict(args))
