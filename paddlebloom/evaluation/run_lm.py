"""Command line of eval/run_eval.py: WikiText-style perplexity or LAMBADA cloze accuracy.

    python eval/run_eval.py --model_name_or_path CKPT --eval_path FILE [--cloze_eval]
        [--batch_size 8 --seq_length 1024 --overlapping_eval 32 --tensor_parallel_degree N
         --output_file results.json --detokenizer auto|wikitext|none
         --model_type bloom --dtype float32|float16|bfloat16 --load_autodist]

Under `python -m paddle.distributed.launch --nproc_per_node N` with --tensor_parallel_degree N
every rank computes; only the main rank prints and writes the results.
"""

import argparse
import json
import sys
import time

from ..atomic import write_file_atomic
from ..cli import run_main
from ..loading import DTYPES, load_model
from ..runtime import init_parallel, parallel_context, quiet, use_all_cores
from . import lm
from .wikitext import wants_wikitext_detokenizer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_eval.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model_name_or_path", required=True, help="checkpoint directory (or a hub name where a hub is reachable)"
    )
    p.add_argument(
        "--model_type",
        default="bloom",
        choices=("bloom",),
        help="PaddleNLP's example flag; BLOOM is the one model here",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights and arithmetic in this type (float16/bfloat16 where the device has the kernels)",
    )
    p.add_argument(
        "--load_autodist",
        action="store_true",
        help="read the weights from auto_dist{rank}.pdparams (PaddleNLP's 176B BLOOM layout)",
    )
    p.add_argument(
        "--eval_path", required=True, help='text file (perplexity) or LAMBADA JSON lines {"text"} with --cloze_eval'
    )
    p.add_argument("--cloze_eval", action="store_true", help="LAMBADA: accuracy of greedily predicting the last word")
    p.add_argument("--batch_size", type=int, default=8, help="windows (or cloze examples) per forward pass")
    p.add_argument("--seq_length", type=int, default=1024, help="tokens the model sees per window")
    p.add_argument(
        "--overlapping_eval",
        type=int,
        default=32,
        help="window stride; later windows score only their last this-many tokens",
    )
    p.add_argument("--tensor_parallel_degree", type=int, default=1)
    p.add_argument("--output_file", help="write the results JSON here (atomically); they are always printed")
    p.add_argument(
        "--detokenizer",
        choices=("auto", "wikitext", "none"),
        default="auto",
        help="undo WikiText markup before tokenising (auto: when the file name contains 'wikitext')",
    )
    args = p.parse_args(argv)
    for name in ("batch_size", "seq_length", "overlapping_eval", "tensor_parallel_degree"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.overlapping_eval > args.seq_length:
        p.error(f"--overlapping_eval {args.overlapping_eval} is larger than --seq_length {args.seq_length}")
    return args


def evaluate(args: argparse.Namespace) -> dict:
    init_parallel(args.tensor_parallel_degree)
    ctx = parallel_context()
    model, tokenizer, config = load_model(args.model_name_or_path, dtype=args.dtype, autodist=args.load_autodist)
    started = time.time()
    settings = {
        "model": args.model_name_or_path,
        "eval_path": args.eval_path,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "seq_length": args.seq_length,
        "tensor_parallel_degree": ctx.tp_degree,
        "data_parallel_degree": ctx.dp_degree,
    }
    if args.cloze_eval:
        examples = lm.read_cloze(args.eval_path, tokenizer, args.seq_length)
        results = lm.score_cloze(model, examples, args.batch_size, tokenizer.pad_token_id)
        report = {"task": "lambada", **settings, **lm.cloze_report(examples, results)}
        scored = report["num_examples"]
    else:
        stream = lm.tokenize_stream(
            args.eval_path, tokenizer, wants_wikitext_detokenizer(args.eval_path, args.detokenizer)
        )
        windows = lm.plan(stream, args.seq_length, args.overlapping_eval)
        nll, counted = lm.score_stream(model, stream.tokens, windows, args.batch_size, tokenizer.pad_token_id)
        report = {
            "task": "perplexity",
            **settings,
            "overlapping_eval": args.overlapping_eval,
            "num_windows": len(windows),
            **lm.perplexity_report(stream, nll, counted),
        }
        scored = counted
    report["seconds"] = round(time.time() - started, 3)
    report["per_second"] = round(scored / max(report["seconds"], 1e-9), 3)
    if ctx.is_main:
        text = json.dumps(report, indent=2, ensure_ascii=False)
        if args.output_file:

            def write(tmp):
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text + "\n")

            write_file_atomic(args.output_file, write)
        print(text)
    return report


def main(argv=None) -> int:
    quiet()
    use_all_cores()
    args = parse_args(argv)
    return run_main("run_eval.py", lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
