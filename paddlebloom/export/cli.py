"""python export/export_generation_model.py --model_name_or_path CKPT [--lora_path P] [--prefix_path P] \\
    --output_path inference/bloom [--dtype float32|bfloat16] [--quant_type weight_only_int8]"""

import argparse

from ..cli import run_main
from ..runtime import quiet
from .exporter import DTYPES, QUANT_TYPES, export_generation


def main(argv=None) -> int:
    quiet()
    p = argparse.ArgumentParser(
        description="Export BLOOM as a step program (new tokens + persistent KV cache in, logits out) "
        "for paddle.inference."
    )
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path", help="LoRA adapter: folded into the weights before export")
    p.add_argument("--prefix_path", help="prefix-tuning adapter: its keys/values are exported beside the program")
    p.add_argument(
        "--output_path",
        required=True,
        help="DIR/NAME: writes DIR/NAME.json + DIR/NAME.pdiparams, tokenizer and generation_config.json "
        "(DIR is replaced as a whole, atomically; never a directory this suite did not write)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weight storage: bfloat16 halves the bytes read per token (fp32 arithmetic)",
    )
    p.add_argument(
        "--quant_type", choices=QUANT_TYPES, help="weight_only_int8: int8 weights, one fp32 scale per output channel"
    )
    args = p.parse_args(argv)
    return run_main(
        "export_generation_model.py",
        lambda: print(
            "wrote "
            + export_generation(
                args.model_name_or_path, args.output_path, args.lora_path, args.prefix_path, args.dtype, args.quant_type
            )
        ),
    )
