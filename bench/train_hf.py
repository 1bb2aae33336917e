"""One benchmark run of the peer: Hugging Face transformers (+ peft for LoRA) on torch CPU.

Runs in the bench venv (.venv-hf), never imported by the suite.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BloomConfig, BloomForCausalLM  # noqa: E402

from bench.common import SHAPES, peak_rss_mb, worker_args  # noqa: E402


def main() -> None:
    a = worker_args(__doc__)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    s = SHAPES[a.shape]
    model = BloomForCausalLM(
        BloomConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], n_layer=s["layers"], n_head=s["heads"])
    )
    if a.recompute:
        model.gradient_checkpointing_enable()
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query_key_value"])
        )
    model.train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    ids = torch.from_numpy(
        np.random.RandomState(0).randint(4, s["vocab"], size=(s["batch"], s["seq"] + 1)).astype(np.int64)
    )
    times = []
    for _ in range(a.steps + 1):
        t = time.perf_counter()
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])  # HF shifts inside: same scored tokens
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    print(
        json.dumps(
            {
                "system": "hf+peft",
                "tokens_per_s": s["batch"] * s["seq"] / step,
                "step_s": step,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
