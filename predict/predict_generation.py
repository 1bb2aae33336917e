"""Predict with BLOOM and/or merge tensor-parallel shards (+ LoRA) into one checkpoint.

python predict/predict_generation.py --model_name_or_path CKPT --data_file in.jsonl --output_file out.jsonl
python -m paddle.distributed.launch --nproc_per_node 2 predict/predict_generation.py --model_name_or_path SHARDS ...
python predict/predict_generation.py --model_name_or_path SHARDS --lora_path LORA --save_onepiece_model_path MERGED
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cli import quiet_upstream_warnings  # noqa: E402 - Paddle-free

quiet_upstream_warnings()  # before the imports below import Paddle, which warns as it loads
from paddlebloom.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
