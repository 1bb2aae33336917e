"""python export/export_generation_model.py --model_name_or_path CKPT [--lora_path P] [--prefix_path P] --output_path inference/bloom [--dtype float32|bfloat16]"""
import argparse

from ..cli import run_main
from ..runtime import quiet
from .exporter import DTYPES, export_generation


def main(argv=None) -> int:
    quiet()
    p = argparse.ArgumentParser(description="Export BLOOM's whole generation loop (KV cache, greedy and sampling) as one static program.")
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path", help="LoRA adapter: folded into the weights before export")
    p.add_argument("--prefix_path", help="prefix-tuning adapter: its keys/values become part of the program")
    p.add_argument("--output_path", required=True, help="DIR/NAME: writes DIR/NAME.json + DIR/NAME.pdiparams, tokenizer and generation_config.json (DIR is replaced as a whole, atomically)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    args = p.parse_args(argv)
    return run_main("export_generation_model.py", lambda: print(f"wrote {export_generation(args.model_name_or_path, args.output_path, args.lora_path, args.prefix_path, args.dtype)}"))
