"""One generation measurement of ours, printed as one JSON line (run by bench/run_generate_bench.py).

    python bench/generate_ours.py --mode static|dynamic --model_dir DIR --batch 1 --new_tokens 64 \\
        [--enable_mkldnn] [--precision fp32|bf16|int8]

EOS is disabled so every run produces exactly --new_tokens tokens per row (as the HF side does).
Both modes run with paddlebloom.deploy's MKL set-up (AVX2 kernels on AMD CPUs).
"""

import argparse
import json
import time

import numpy as np

from bench.common import peak_rss_mb


def prompts(batch: int, length: int, vocab: int):
    rng = np.random.RandomState(0)
    return rng.randint(10, min(vocab, 2000), size=(batch, length)).tolist()


def run_static(a, ids):
    from paddlebloom.workarounds import prefer_avx2_mkl_on_amd

    prefer_avx2_mkl_on_amd()  # as deploy/infer_generation.py does
    from paddlebloom.deploy.predictor import GenerationPredictor, Sampling

    predictor = GenerationPredictor(
        a.model_dir, "bloom", cpu_threads=a.threads, enable_mkldnn=a.enable_mkldnn, precision=a.precision
    )
    predictor.eos_token_id = -1  # never stop early: fixed work per run
    predictor.generate(ids, Sampling(max_new_tokens=2))  # warm-up: first-run allocations and oneDNN primitive creation
    began = time.perf_counter()
    out = predictor.generate(ids, Sampling(max_new_tokens=a.new_tokens))
    return out, time.perf_counter() - began


def run_dynamic(a, ids):
    from paddlebloom.workarounds import prefer_avx2_mkl_on_amd

    prefer_avx2_mkl_on_amd()  # the same MKL set-up as the deploy script, so the two compare fairly
    import paddle

    from paddlebloom.loading import load_model

    paddle.base.core.set_num_threads(a.threads)
    model, tokenizer, _ = load_model(a.model_dir)

    def generate(n):
        try:
            from paddlebloom.generation import GenerationConfig, generate_ids
        except ImportError:
            generate_ids = None
        if generate_ids is not None:
            return generate_ids(
                model,
                ids,
                GenerationConfig(
                    max_new_tokens=n,
                    decode_strategy="greedy_search",
                    eos_token_id=-1,
                    pad_token_id=tokenizer.pad_token_id,
                ),
            )
        # Before paddlebloom.generation existed: the plain cached greedy loop.
        out, past, x = [[] for _ in ids], None, paddle.to_tensor(ids, dtype="int64")
        with paddle.no_grad():
            for _ in range(n):
                res = model(x, past_key_values=past, use_cache=True, last_logits_only=True)
                past, x = res.past_key_values, res.logits[:, -1].argmax(axis=-1, keepdim=True)
                for row, t in zip(out, x.numpy()[:, 0].tolist()):
                    row.append(t)
        return out

    generate(2)
    began = time.perf_counter()
    out = generate(a.new_tokens)
    return out, time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["static", "dynamic"], required=True)
    p.add_argument("--model_dir", required=True, help="static: the export directory; dynamic: the checkpoint")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--enable_mkldnn", action="store_true")
    p.add_argument("--precision", default="fp32", help="static mode: passed to GenerationPredictor (fp32, bf16, int8)")
    a = p.parse_args()
    ids = prompts(a.batch, a.prompt_len, 250880)
    out, seconds = (run_static if a.mode == "static" else run_dynamic)(a, ids)
    produced = sum(len(r) for r in out)
    assert produced == a.batch * a.new_tokens, produced
    print(
        json.dumps(
            {
                "tokens_per_s": produced / seconds,
                "seconds": seconds,
                "first_row": [int(t) for t in out[0][:8]],
                "first_tokens_all": [[int(t) for t in row[:8]] for row in out],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
