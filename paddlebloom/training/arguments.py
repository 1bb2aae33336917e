"""Command-line flags of finetune_generation.py: PaddleNLP's BLOOM example names, all working.

Booleans accept both spellings users have in their scripts: `--lora` and `--lora True`.
"""

import argparse
import os
import sys

from ..data.formats import FORMATS
from ..data.templates import TEMPLATES
from .json_config import argv_from_json

DEFAULT_DATA_DIR, TRAIN_JSON, DEV_JSON = "./data", "train.json", "dev.json"


def str2bool(text) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("true", "1", "yes", "y"):
        return True
    if text.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _flag(p, name, help_text, default=False, aliases=()):
    p.add_argument(name, *aliases, type=str2bool, nargs="?", const=True, default=default, help=help_text)


def build_parser(
    description: str = "Fine-tune BLOOM: full, tensor-parallel, LoRA or prefix.", data_formats=FORMATS
) -> argparse.ArgumentParser:
    """The fine-tuning flags; other trainers (finetune/dpo.py) add their own groups to it."""
    p = argparse.ArgumentParser(description=description)
    g = p.add_argument_group("model and data")
    g.add_argument("--model_name_or_path", required=True)
    g.add_argument(
        "--train_file",
        "--data_path",
        dest="train_file",
        nargs="+",
        help="training data (JSON, JSON lines, .txt, or a pretokenized store)",
    )
    g.add_argument("--validation_file", "--dev_path", dest="validation_file", nargs="+")
    g.add_argument(
        "--task_name_or_path",
        "--dataset_name_or_path",
        dest="task_name_or_path",
        default=None,
        help=f"PaddleNLP's data directory: {TRAIN_JSON} and {DEV_JSON} there stand in for missing "
        "--train_file/--validation_file "
        f"(default {DEFAULT_DATA_DIR} when neither file flag is given)",
    )
    g.add_argument("--data_format", choices=data_formats, help="force a format instead of detecting it per record")
    g.add_argument("--template", default="belle", choices=sorted(TEMPLATES))
    g.add_argument("--src_length", "--max_input_length", dest="src_length", type=int, default=512)
    g.add_argument("--tgt_length", "--max_output_length", dest="tgt_length", type=int, default=512)
    g.add_argument("--output_dir", required=True)
    _flag(g, "--overwrite_output_dir", "start afresh instead of resuming from the newest checkpoint")

    g = p.add_argument_group("schedule")
    _flag(g, "--do_train", "train (the default when neither --do_train nor --do_eval is given)")
    _flag(g, "--do_eval", "evaluate on --validation_file (every --eval_steps and at the end)")
    g.add_argument("--num_train_epochs", type=float, default=1.0)
    g.add_argument("--max_steps", type=int, default=-1, help="overrides --num_train_epochs when > 0")
    g.add_argument("--learning_rate", type=float, default=3e-5)
    g.add_argument("--lr_scheduler_type", default="linear", choices=("linear", "cosine", "constant"))
    g.add_argument("--warmup_steps", type=int, default=0)
    g.add_argument("--warmup_ratio", type=float, default=0.0)
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--label_smoothing", type=float, default=0.0)
    g.add_argument("--per_device_train_batch_size", type=int, default=4)
    g.add_argument("--per_device_eval_batch_size", type=int, default=8)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--eval_steps", type=int, default=0, help="0: evaluate only at the end")
    g.add_argument("--save_steps", type=int, default=500, help="0: no intermediate checkpoints")
    g.add_argument("--save_total_limit", type=int, default=0, help="keep at most this many checkpoints (0: all)")
    g.add_argument(
        "--resume_from_checkpoint", default=None, help="a checkpoint directory (default: the newest in --output_dir)"
    )
    _flag(g, "--disable_tqdm", "no progress bar")

    g = p.add_argument_group("precision, memory, parallelism")
    _flag(g, "--fp16", "float16 mixed precision (GPU)")
    _flag(g, "--bf16", "bfloat16 mixed precision (GPU)")
    g.add_argument("--fp16_opt_level", default="O1", choices=("O1", "O2"))
    g.add_argument("--scale_loss", type=float, default=2.0**15, help="initial loss scale for float16")
    _flag(g, "--recompute", "recompute each block in backward: less memory, more compute")
    g.add_argument("--tensor_parallel_degree", type=int, default=1)
    g.add_argument(
        "--sharding",
        default="",
        help='ZeRO sharding on fleet: "stage1" shards the optimizer state over data-parallel ranks '
        '(runs on CPU); "stage2"/"stage3" [offload] need a GPU',
    )
    g.add_argument(
        "--sharding_parallel_degree",
        type=int,
        default=-1,
        help="ranks sharing one copy of the optimizer state (-1: all ranks of a tensor-parallel slot)",
    )
    _flag(g, "--save_shards", "under tensor parallelism save one shard per rank instead of a merged checkpoint")

    g = p.add_argument_group("LoRA")
    _flag(g, "--lora", "train a LoRA adapter instead of all weights")
    g.add_argument("--r", "--lora_rank", dest="r", type=int, default=8)
    g.add_argument("--lora_alpha", type=int, default=16)
    g.add_argument("--lora_dropout", type=float, default=0.05)
    g.add_argument(
        "--lora_target_modules",
        default="query_key_value",
        help="comma list of qkv/query_key_value, dense, dense_h_to_4h, dense_4h_to_h, or regexes",
    )
    _flag(
        g, "--merge_weights", "after training also write the base model with LoRA folded in (output_dir/merged_model)"
    )
    g.add_argument("--lora_path", default=None, help="continue training this LoRA adapter")

    g = p.add_argument_group("prefix tuning")
    _flag(g, "--prefix", "train a prefix (past key/values) instead of the weights", aliases=("--prefix_tuning",))
    g.add_argument("--num_prefix_tokens", type=int, default=64)
    _flag(g, "--prefix_projection", "produce the prefix through a tanh MLP")
    g.add_argument("--prefix_projection_hidden_size", type=int, default=64)
    g.add_argument("--prefix_path", default=None, help="continue training this prefix adapter")

    g = p.add_argument_group("generation during evaluation")
    _flag(
        g,
        "--do_generation",
        "evaluation also answers the validation prompts greedily and reports ROUGE-1/2/L "
        "(OUTPUT_DIR/eval_generations.jsonl)",
        aliases=("--eval_with_do_generation",),
    )
    g.add_argument(
        "--min_tgt_length",
        type=int,
        default=0,
        help="with --do_generation: new tokens before EOS may end an answer (at most --tgt_length)",
    )
    return p


def fill_data_files(args) -> None:
    """PaddleNLP's example reads DIR/train.json and DIR/dev.json (DIR defaults to ./data): used for
    whichever of --train_file / --validation_file is missing and needed."""
    if args.task_name_or_path is None and (args.train_file or args.validation_file):
        return
    directory = args.task_name_or_path or DEFAULT_DATA_DIR
    wanted = (
        ("train_file", TRAIN_JSON, args.do_train),
        ("validation_file", DEV_JSON, args.do_eval or args.do_generation),
    )
    for dest, name, needed in wanted:
        path = os.path.join(directory, name)
        if needed and not getattr(args, dest) and os.path.isfile(path):
            setattr(args, dest, [path])


# (flag, lowest allowed, lowest excluded?, highest allowed or None, highest excluded?): a value out
# of range is named by its flag here, not by whichever Paddle call would trip over it later.
RANGES = (
    ("learning_rate", 0, False, None, False),
    ("weight_decay", 0, False, None, False),
    ("adam_beta1", 0, False, 1, True),
    ("adam_beta2", 0, False, 1, True),
    ("adam_epsilon", 0, True, None, False),
    ("max_grad_norm", 0, False, None, False),
    ("num_train_epochs", 0, True, None, False),
    ("warmup_steps", 0, False, None, False),
    ("logging_steps", 0, False, None, False),
    ("eval_steps", 0, False, None, False),
    ("save_steps", 0, False, None, False),
    ("save_total_limit", 0, False, None, False),
    ("scale_loss", 0, True, None, False),
    ("lora_alpha", 0, True, None, False),
    ("lora_dropout", 0, False, 1, True),
    ("prefix_projection_hidden_size", 1, False, None, False),
    ("tensor_parallel_degree", 1, False, None, False),
    ("min_tgt_length", 0, False, None, False),
)


def check_ranges(args) -> list:
    problems = []
    for name, lo, lo_open, hi, hi_open in RANGES:
        value = getattr(args, name)
        if value < lo or (lo_open and value == lo) or (hi is not None and (value > hi or (hi_open and value == hi))):
            bounds = f"{'>' if lo_open else '>='} {lo}" + (
                "" if hi is None else f" and {'<' if hi_open else '<='} {hi}"
            )
            problems.append(f"--{name} must be {bounds}, got {value}")
    if args.min_tgt_length > args.tgt_length:
        problems.append(
            f"--min_tgt_length {args.min_tgt_length} is more than --tgt_length {args.tgt_length} (the most new tokens)"
        )
    return problems


SHARDING_STAGES = ("stage1", "stage2", "stage3")


def parse_sharding(text: str):
    """PaddleNLP's --sharding value ("", "stage1", "stage2 offload", ...) -> (stage or None, offload)."""
    words = (text or "").split()
    unknown = [w for w in words if w not in SHARDING_STAGES + ("offload",)]
    stages = [w for w in words if w in SHARDING_STAGES]
    if unknown:
        raise ValueError(
            f"--sharding: unknown option {unknown[0]!r} (one of stage1, stage2, stage3, optionally with offload)"
        )
    if len(stages) > 1:
        raise ValueError(f"--sharding takes one stage, got {' and '.join(stages)}")
    if "offload" in words and not stages:
        raise ValueError('--sharding offload needs a stage: "stage2 offload" or "stage3 offload"')
    return (stages[0] if stages else None), "offload" in words


def parse_args(argv=None, parser=None) -> argparse.Namespace:
    """Flags, or PaddleNLP llm-style `CONFIG.json [flags that override it]`."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        argv = argv_from_json(argv[0], parser) + argv[1:]  # argparse keeps the last value of a flag: later flags win
    args = parser.parse_args(argv)
    if not args.do_train and not args.do_eval:
        args.do_train = True
    fill_data_files(args)
    problems = check_ranges(args)
    if args.do_train and not args.train_file:
        problems.append(
            f"--do_train needs --train_file (or {TRAIN_JSON} in --task_name_or_path, default {DEFAULT_DATA_DIR})"
        )
    for flag in ("do_eval", "do_generation"):
        if getattr(args, flag) and not args.validation_file:
            problems.append(
                f"--{flag} needs --validation_file (or {DEV_JSON} in --task_name_or_path, default {DEFAULT_DATA_DIR})"
            )
    if args.lora and args.prefix:
        problems.append("--lora and --prefix cannot be combined")
    for name in (
        "src_length",
        "tgt_length",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "r",
        "num_prefix_tokens",
    ):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1")
    if not 0.0 <= args.label_smoothing < 1.0:
        problems.append("--label_smoothing must be in [0, 1)")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        problems.append("--warmup_ratio must be in [0, 1]")
    if args.fp16 and args.bf16:
        problems.append("--fp16 and --bf16 cannot be combined")
    try:
        stage, _ = parse_sharding(args.sharding)
        if stage is None and args.sharding_parallel_degree > 1:
            problems.append(
                f"--sharding_parallel_degree {args.sharding_parallel_degree} needs --sharding stage1 (nothing would be "
                "sharded)"
            )
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    return args
