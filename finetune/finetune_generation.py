"""Fine-tune BLOOM (full, tensor-parallel, LoRA, prefix).

python finetune/finetune_generation.py --model_name_or_path DIR --train_file data.json --output_dir out
python -m paddle.distributed.launch --nproc_per_node 2 finetune/finetune_generation.py ... --tensor_parallel_degree 2
python finetune/finetune_generation.py config.json [--flag value ...]   (PaddleNLP llm-style: flat JSON of flag names)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cli import quiet_upstream_warnings, run_main  # noqa: E402 - Paddle-free

quiet_upstream_warnings()  # before the imports below import Paddle, which warns as it loads
from paddlebloom.training.arguments import parse_args  # noqa: E402
from paddlebloom.training.trainer import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main("finetune_generation.py", lambda: run(parse_args())))
