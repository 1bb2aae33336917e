"""python deploy/infer_generation.py --model_dir inference/ --model_prefix bloom \\
    [--data_file IN.jsonl --output_file OUT.jsonl] ...

Records of any training format become prompts exactly as in training (`prompt_for_prediction`);
without --data_file, each stdin line is one raw prompt. Each output line is the input record
plus "prediction". Up to --batch_size prompts decode together; when one finishes, the next
prompt takes its place at the next step. We print the time and new tokens/s to stderr.
"""

import argparse
import json
import sys
import time

from ..atomic import write_output
from ..cli import run_main
from ..data.formats import prompt_for_prediction
from ..data.readers import DataError, iter_records, stdin_prompts
from ..data.templates import get_template
from ..engine.settings import add_decoding_flags, from_flags
from ..runtime import quiet
from ..tokenizer import BloomTokenizer
from ..workarounds import prefer_avx2_mkl_on_amd
from .predictor import PRECISIONS, GenerationPredictor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate with an exported BLOOM program (paddle.inference only).")
    p.add_argument("--model_dir", required=True)
    p.add_argument("--model_prefix", default="bloom")
    p.add_argument(
        "--data_file", help="records (.jsonl / JSON array / .txt) in any training format; default: prompts from stdin"
    )
    p.add_argument("--output_file", help="JSON lines out (default: stdout)")
    p.add_argument("--template", default="belle", help="prompt template the model was trained with")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--cpu_threads", type=int, default=0, help="0: all cores")
    p.add_argument("--enable_mkldnn", action="store_true", help="oneDNN kernels (needed for bf16)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    # Decoding: unset flags take the exported generation_config.json's values; sampling is seeded (0) unless --seed says
    # otherwise.
    add_decoding_flags(p, {"seed": 0})
    return p.parse_args(argv)


def read_prompts(args, template):
    """[(line_no, record or None, prompt)] from --data_file or stdin."""
    if not args.data_file:
        return stdin_prompts(sys.stdin)
    return [
        (n, record, prompt_for_prediction(record, template, where=f"{args.data_file}:{n}"))
        for n, record in iter_records(args.data_file)
    ]


def run(args) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size}: must be >= 1")
    template = get_template(args.template)
    predictor = GenerationPredictor.from_flags(args, max_batch_size=args.batch_size)
    sampling = from_flags(args, predictor.generation_config)  # EOS and pad ids too: the exported config has them
    tokenizer = BloomTokenizer.from_pretrained(args.model_dir)
    items = read_prompts(args, template)  # every input error surfaces before any generation
    encoded = [tokenizer.encode(prompt) for _, _, prompt in items]
    for (n, _, _), ids in zip(items, encoded):
        if not ids:
            raise DataError(f"{args.data_file or '<stdin>'}:{n}: prompt is empty")
    began = time.perf_counter()
    outputs = predictor.generate(encoded, sampling)
    seconds = time.perf_counter() - began
    new = sum(len(o) for o in outputs)
    print(
        f"{len(items)} prompts, {new} new tokens, {seconds:.2f} s, {new / max(seconds, 1e-9):.1f} tokens/s (up to "
        f"{args.batch_size} at once)",
        file=sys.stderr,
    )
    lines = []
    for (n, record, prompt), ids in zip(items, outputs):
        text = tokenizer.decode(ids)
        lines.append(
            json.dumps(
                {**record, "prediction": text} if record is not None else {"prompt": prompt, "prediction": text},
                ensure_ascii=False,
            )
        )
    write_output("".join(line + "\n" for line in lines), args.output_file)


def main(argv=None) -> int:
    quiet()
    prefer_avx2_mkl_on_amd()  # before the predictor's first MKL routine
    args = parse_args(argv)
    return run_main("infer_generation.py", lambda: run(args))
