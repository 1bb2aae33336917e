"""One generation measurement of the peer (HF transformers `generate`, torch CPU), one JSON line.

    .venv-hf/bin/python bench/generate_hf.py --model_dir HF_DIR --batch 1 --new_tokens 64 [--dtype bfloat16]

--dtype bfloat16 casts the fp32 checkpoint's weights at load: what a user with a bf16-capable CPU
picks to halve the bytes each decode step streams from memory.
"""

import argparse
import json
import time

import torch
from transformers import BloomConfig, BloomForCausalLM

from bench.common import peak_rss_mb
from bench.generate_ours import prompts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = BloomForCausalLM.from_pretrained(
        a.model_dir, config=BloomConfig.from_pretrained(a.model_dir), dtype=getattr(torch, a.dtype)
    ).eval()
    ids = torch.tensor(prompts(a.batch, a.prompt_len, 250880))

    def generate(n):
        with torch.no_grad():
            return model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=3,
                eos_token_id=None,
            )

    generate(2)
    began = time.perf_counter()
    out = generate(a.new_tokens)
    seconds = time.perf_counter() - began
    produced = (out.shape[1] - ids.shape[1]) * out.shape[0]
    assert produced == a.batch * a.new_tokens, produced
    print(
        json.dumps(
            {
                "tokens_per_s": produced / seconds,
                "seconds": seconds,
                "first_row": out[0, ids.shape[1] : ids.shape[1] + 8].tolist(),
                "first_tokens_all": out[:, ids.shape[1] : ids.shape[1] + 8].tolist(),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
