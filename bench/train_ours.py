"""One benchmark run of this suite's training step (the trainer's own train_step)."""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from bench.common import SHAPES, peak_rss_mb, worker_args  # noqa: E402
from paddlebloom.config import BloomConfig  # noqa: E402
from paddlebloom.model import BloomForCausalLM  # noqa: E402
from paddlebloom.runtime import quiet, use_all_cores  # noqa: E402
from paddlebloom.training.arguments import parse_args  # noqa: E402
from paddlebloom.training.optim import build_optimizer  # noqa: E402
from paddlebloom.training.trainer import train_step  # noqa: E402


def main() -> None:
    a = worker_args(__doc__)
    quiet()
    use_all_cores()
    s = SHAPES[a.shape]
    paddle.seed(0)
    model = BloomForCausalLM(
        BloomConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], n_layer=s["layers"], n_head=s["heads"])
    )
    flags = [
        "--model_name_or_path",
        "-",
        "--output_dir",
        "-",
        "--train_file",
        "-",
        "--learning_rate",
        "1e-4",
        "--max_grad_norm",
        "1.0",
    ]
    if a.method == "lora":
        from paddlebloom.lora.config import LoRAConfig
        from paddlebloom.lora.model import LoRA

        LoRA(
            LoRAConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LoRAConfig.parse_targets("query_key_value"))
        ).apply(model)
    model.set_recompute(a.recompute)
    model.train()
    args = parse_args(flags)
    optimizer, _, named = build_optimizer(model, args, 100)
    ids = np.random.RandomState(0).randint(4, s["vocab"], size=(s["batch"], s["seq"] + 1)).astype(np.int64)
    batch = [(ids[:, :-1], np.ones_like(ids[:, :-1]), ids[:, 1:])]
    times = []
    for _ in range(a.steps + 1):  # the first step warms up (allocations, kernel choice)
        t = time.perf_counter()
        train_step(model, optimizer, named, batch, args)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    print(
        json.dumps(
            {
                "system": "paddlebloom",
                "tokens_per_s": s["batch"] * s["seq"] / step,
                "step_s": step,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
