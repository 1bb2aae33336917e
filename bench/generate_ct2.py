"""One generation measurement of CTranslate2 (the fastest CPU decoding peer users pick), one JSON line.

    .venv-hf/bin/python bench/generate_ct2.py --model_dir CT2_DIR --compute_type int8 --batch 1 --new_tokens 64

CT2_DIR comes from `ct2-transformers-converter --model HF_DIR --quantization int8|float32`
(bench/generate_models.py). Same prompts as the other workers (bench/generate_ours.py's
`prompts()`), greedy, one generation in flight (inter_threads=1) on --threads math threads.
EOS is disabled (min_length = max_length) so every row produces exactly --new_tokens tokens.
"""

import argparse
import json
import os
import time

import ctranslate2

from bench.common import peak_rss_mb
from bench.generate_ours import prompts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True)
    p.add_argument(
        "--compute_type",
        default="int8",
        help="int8, int8_float32, float32, ... (what the CPU supports: ctranslate2.get_supported_compute_types('cpu'))",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    generator = ctranslate2.Generator(
        a.model_dir, device="cpu", compute_type=a.compute_type, inter_threads=1, intra_threads=a.threads
    )
    with open(os.path.join(a.model_dir, "vocabulary.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)  # CTranslate2 takes tokens as strings; the converter kept HF's id order
    ids = prompts(a.batch, a.prompt_len, 250880)
    start_tokens = [[vocabulary[i] for i in row] for row in ids]

    def generate(n):
        # include_prompt_in_result=False: the prompt is forwarded in one pass (as HF and ours do)
        # and the lengths count new tokens only.
        results = generator.generate_batch(
            start_tokens, max_length=n, min_length=n, beam_size=1, sampling_topk=1, include_prompt_in_result=False
        )
        return [r.sequences_ids[0] for r in results]

    generate(2)  # warm-up: first-call allocations
    began = time.perf_counter()
    out = generate(a.new_tokens)
    seconds = time.perf_counter() - began
    produced = sum(len(r) for r in out)
    assert produced == a.batch * a.new_tokens, (produced, [len(r) for r in out])
    print(
        json.dumps(
            {
                "tokens_per_s": produced / seconds,
                "seconds": seconds,
                "first_row": [int(t) for t in out[0][:8]],
                "first_tokens_all": [[int(t) for t in row[:8]] for row in out],
                "peak_rss_mb": peak_rss_mb(),
                # on CPU "int8" runs as int8_float32: the report says which kernels ran
                "compute_type": generator.compute_type,
                "supported_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
            }
        )
    )


if __name__ == "__main__":
    main()
