"""Tokenise a training file once into a memory-mapped store that --train_file accepts.

    python -m paddlebloom.tools.pretokenize --model_name_or_path CKPT --input train.json \
        --output_dir data/train.tok --src_length 512 --tgt_length 512 [--template belle --data_format ...]
"""

import argparse
import sys

from ..cli import run_main
from ..data.dataset import load_examples
from ..data.formats import FORMATS
from ..data.pretokenized import write_pretokenized
from ..data.templates import TEMPLATES, get_template
from ..loading import resolve_model_dir
from ..tokenizer import BloomTokenizer


def pretokenize(
    model_name_or_path: str,
    inputs,
    output_dir: str,
    src_length: int,
    tgt_length: int,
    template: str = "belle",
    data_format=None,
) -> dict:
    model_dir = resolve_model_dir(model_name_or_path)
    tokenizer = BloomTokenizer.from_pretrained(model_dir)
    examples = load_examples(inputs, tokenizer, get_template(template), src_length, tgt_length, data_format)
    meta = {
        "sources": list(inputs),
        "template": template,
        "src_length": src_length,
        "tgt_length": tgt_length,
        "data_format": data_format,
        "tokenizer": tokenizer.fingerprint(),
    }
    write_pretokenized(examples, output_dir, meta)
    return {"examples": len(examples), "tokens": int(sum(len(x) for x, _ in examples)), "output_dir": output_dir}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Tokenise training data once into a memory-mapped store.")
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--input", required=True, nargs="+")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--src_length", type=int, default=512)
    p.add_argument("--tgt_length", type=int, default=512)
    p.add_argument("--template", default="belle", choices=sorted(TEMPLATES))
    p.add_argument("--data_format", choices=FORMATS)
    args = p.parse_args(argv)
    return run_main(
        "pretokenize",
        lambda: print(
            pretokenize(
                args.model_name_or_path,
                args.input,
                args.output_dir,
                args.src_length,
                args.tgt_length,
                args.template,
                args.data_format,
            )
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
