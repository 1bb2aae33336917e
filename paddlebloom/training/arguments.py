"""Command-line flags of finetune_generation.py: PaddleNLP's BLOOM example names, all working.

Booleans accept both spellings users have in their scripts: `--lora` and `--lora True`.
"""
import argparse

from ..data.formats import FORMATS, TEMPLATES


def str2bool(text) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("true", "1", "yes", "y"):
        return True
    if text.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _flag(p, name, help_text, default=False):
    p.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help_text)


def build_parser(description: str = "Fine-tune BLOOM: full, tensor-parallel, LoRA or prefix.", data_formats=FORMATS) -> argparse.ArgumentParser:
    """The fine-tuning flags; other trainers (finetune/dpo.py) add their own groups to it."""
    p = argparse.ArgumentParser(description=description)
    g = p.add_argument_group("model and data")
    g.add_argument("--model_name_or_path", required=True)
    g.add_argument("--train_file", "--data_path", dest="train_file", nargs="+", help="training data (JSON, JSON lines, .txt, or a pretokenized store)")
    g.add_argument("--validation_file", "--dev_path", dest="validation_file", nargs="+")
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
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint directory (default: the newest in --output_dir)")
    _flag(g, "--disable_tqdm", "no progress bar")

    g = p.add_argument_group("precision, memory, parallelism")
    _flag(g, "--fp16", "float16 mixed precision (GPU)")
    _flag(g, "--bf16", "bfloat16 mixed precision (GPU)")
    g.add_argument("--fp16_opt_level", default="O1", choices=("O1", "O2"))
    g.add_argument("--scale_loss", type=float, default=2.0 ** 15, help="initial loss scale for float16")
    _flag(g, "--recompute", "recompute each block in backward: less memory, more compute")
    g.add_argument("--tensor_parallel_degree", type=int, default=1)
    _flag(g, "--save_shards", "under tensor parallelism save one shard per rank instead of a merged checkpoint")

    g = p.add_argument_group("LoRA")
    _flag(g, "--lora", "train a LoRA adapter instead of all weights")
    g.add_argument("--r", "--lora_rank", dest="r", type=int, default=8)
    g.add_argument("--lora_alpha", type=int, default=16)
    g.add_argument("--lora_dropout", type=float, default=0.05)
    g.add_argument("--lora_target_modules", default="query_key_value", help="comma list of qkv/query_key_value, dense, dense_h_to_4h, dense_4h_to_h, or regexes")
    _flag(g, "--merge_weights", "after training also write the base model with LoRA folded in (output_dir/merged_model)")
    g.add_argument("--lora_path", default=None, help="continue training this LoRA adapter")

    g = p.add_argument_group("prefix tuning")
    _flag(g, "--prefix", "train a prefix (past key/values) instead of the weights")
    g.add_argument("--num_prefix_tokens", type=int, default=64)
    _flag(g, "--prefix_projection", "produce the prefix through a tanh MLP")
    g.add_argument("--prefix_projection_hidden_size", type=int, default=64)
    g.add_argument("--prefix_path", default=None, help="continue training this prefix adapter")
    return p


def parse_args(argv=None, parser=None) -> argparse.Namespace:
    args = (parser or build_parser()).parse_args(argv)
    if not args.do_train and not args.do_eval:
        args.do_train = True
    problems = []
    if args.do_train and not args.train_file:
        problems.append("--do_train needs --train_file")
    if args.do_eval and not args.validation_file:
        problems.append("--do_eval needs --validation_file")
    if args.lora and args.prefix:
        problems.append("--lora and --prefix cannot be combined")
    for name in ("src_length", "tgt_length", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "r", "num_prefix_tokens"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1")
    if not 0.0 <= args.label_smoothing < 1.0:
        problems.append("--label_smoothing must be in [0, 1)")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        problems.append("--warmup_ratio must be in [0, 1]")
    if args.fp16 and args.bf16:
        problems.append("--fp16 and --bf16 cannot be combined")
    if problems:
        raise ValueError("; ".join(problems))
    return args
