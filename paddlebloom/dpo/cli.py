"""finetune/dpo.py's flags: the fine-tuning flags (same names, same meaning) plus DPO's own."""

from ..training.arguments import build_parser, parse_args
from ..training.trainer import run
from .data import PREFERENCE_FORMATS
from .loss import LOSS_TYPES
from .objective import PreferenceObjective


def build_dpo_parser():
    p = build_parser("Preference-tune BLOOM with DPO or IPO: full, tensor-parallel or LoRA.", PREFERENCE_FORMATS)
    g = p.add_argument_group("preference tuning (--label_smoothing is conservative DPO's label-noise rate here)")
    g.add_argument("--beta", type=float, default=0.1, help="strength of the tie to the reference model (IPO: its tau)")
    g.add_argument(
        "--loss_type",
        default="sigmoid",
        choices=LOSS_TYPES,
        help="sigmoid: DPO (cDPO with --label_smoothing); ipo: IPO",
    )
    return p


def parse_dpo_args(argv=None):
    args = parse_args(argv, build_dpo_parser())
    problems = []
    if args.prefix:
        problems.append("--prefix is not supported by DPO: tune all weights or --lora")
    if getattr(args, "do_generation", False):
        problems.append(
            "--do_generation scores fine-tuning answers by ROUGE; DPO evaluations report preference accuracy"
        )
    if args.beta <= 0:
        problems.append("--beta must be positive")
    if not 0.0 <= args.label_smoothing < 0.5:
        problems.append("--label_smoothing (conservative DPO) must be in [0, 0.5)")
    if args.loss_type != "sigmoid" and args.label_smoothing > 0:
        problems.append(f"--label_smoothing applies to --loss_type sigmoid only, not {args.loss_type}")
    if problems:
        raise ValueError("; ".join(problems))
    return args


def run_dpo(args) -> dict:
    return run(args, PreferenceObjective(args.beta, args.loss_type, args.label_smoothing))
