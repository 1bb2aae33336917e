"""Preference-tune BLOOM with DPO / IPO (full, tensor-parallel, LoRA), on the fine-tuning trainer.

python finetune/dpo.py --model_name_or_path DIR --train_file pairs.jsonl --output_dir out \\
    [--lora] [--beta 0.1 --loss_type sigmoid|ipo]
python -m paddle.distributed.launch --nproc_per_node 2 finetune/dpo.py ... --tensor_parallel_degree 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cli import quiet_upstream_warnings, run_main  # noqa: E402 - Paddle-free

quiet_upstream_warnings()  # before the imports below import Paddle, which warns as it loads
from paddlebloom.dpo.cli import parse_dpo_args, run_dpo  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main("dpo.py", lambda: run_dpo(parse_dpo_args())))
