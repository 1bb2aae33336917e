"""Generation speed: static deploy (paddle.inference) vs dynamic predict vs HF transformers `generate`, one run.

    python bench/run_generate_bench.py [--rounds 1] [--batches 1 8] [--new_tokens 64] [--mkldnn]

Same bloom-560m-shaped random model for all (our checkpoint, converted to HF's layout for the
peer), same prompts (32 random tokens), greedy, EOS off so every run makes exactly new_tokens per
row, --threads math threads each (default 2). Each measurement is a fresh process; systems alternate within a round.
Writes bench/results/generate.json and prints a table with tokens/s, MFU and memory-bandwidth use.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.run_train_bench import OURS, PEER, matmul_peak  # noqa: E402
from bench.common import SHAPES, params  # noqa: E402

WORK = os.path.join(ROOT, "runs", "bench", "bloom560m")
BANDWIDTH_GBS = 28.0  # STACK.md: measured memory read bandwidth of these machines


def prepare() -> dict:
    """Checkpoint, static export and HF copy of one random bloom-560m-shaped model (reused when present)."""
    shape = SHAPES["b"]
    dirs = {k: os.path.join(WORK, k) for k in ("ckpt", "static", "hf")}
    if not os.path.isdir(dirs["ckpt"]):
        from paddlebloom.create_tiny import create_tiny

        create_tiny(dirs["ckpt"], vocab_size=shape["vocab"], hidden_size=shape["hidden"], n_layer=shape["layers"], n_head=shape["heads"])
    if not os.path.isdir(dirs["static"]):
        _python(OURS, os.path.join(ROOT, "export", "export_generation_model.py"), "--model_name_or_path", dirs["ckpt"], "--output_path", os.path.join(dirs["static"], "bloom"))
    if not os.path.isdir(dirs["hf"]):
        to_hf(dirs["ckpt"], dirs["hf"])
    return dirs


def to_hf(ckpt: str, out: str) -> None:
    """Our (PaddleNLP-named, [in, out]) weights as HF BLOOM safetensors ([out, in], `transformer.` prefix)."""
    import numpy as np
    from safetensors.numpy import save_file

    from paddlebloom.checkpoint import atomic_directory, read_state_for_rank

    state = read_state_for_rank(ckpt)
    hf = {}
    for name, value in state.items():
        transposed = value.ndim == 2 and "word_embeddings" not in name
        hf["transformer." + name[len("bloom."):]] = np.ascontiguousarray(value.T if transposed else value)
    with atomic_directory(out) as tmp:
        save_file(hf, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(ckpt, "config.json")) as f:
            config = json.load(f)
        config.update({"architectures": ["BloomForCausalLM"], "model_type": "bloom"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def _python(python: str, script: str, *args) -> dict:
    threads = args[args.index("--threads") + 1] if "--threads" in args else "2"
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3", OMP_NUM_THREADS=threads)
    proc = subprocess.run([python, script, *args], capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return json.loads(last) if last.startswith("{") else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--mkldnn", action="store_true", help="also measure the static program with oneDNN kernels")
    p.add_argument("--threads", type=int, default=2, help="math threads per system (torch's OpenMP collapses when other processes hold the cores: try 1)")
    a = p.parse_args()
    dirs = prepare()
    load_before = os.getloadavg()[0]
    systems = {
        "static deploy (paddle.inference fp32)": (OURS, "generate_ours.py", "--mode", "static", "--model_dir", dirs["static"]),
        "dynamic predict (paddle eager fp32)": (OURS, "generate_ours.py", "--mode", "dynamic", "--model_dir", dirs["ckpt"]),
        "HF transformers generate (torch fp32)": (PEER, "generate_hf.py", "--model_dir", dirs["hf"]),
    }
    if a.mkldnn:
        systems["static deploy (paddle.inference fp32, oneDNN)"] = systems["static deploy (paddle.inference fp32)"] + ("--enable_mkldnn",)
    peak = max(matmul_peak(OURS), matmul_peak(PEER))
    n = params(SHAPES["b"])
    shape = SHAPES["b"]
    context = 32 + a.new_tokens / 2  # mean attended length
    flops_per_token = 2 * n + 4 * shape["layers"] * context * shape["hidden"]
    rows = []
    for batch in a.batches:
        results = {name: [] for name in systems}
        for _ in range(a.rounds):
            for name, (python, script, *args) in systems.items():
                results[name].append(_python(python, os.path.join(ROOT, "bench", script), *args, "--batch", str(batch), "--new_tokens", str(a.new_tokens), "--threads", str(a.threads)))
        for name, runs in results.items():
            tps = statistics.median(r["tokens_per_s"] for r in runs)
            rows.append({"system": name, "batch": batch, "tokens_per_s": tps, "mfu": tps * flops_per_token / (peak * 1e9),
                         # Each decode step reads every weight once (fp32: 4 bytes) whatever the batch.
                         "weight_read_gbs": tps / batch * 4 * n / 1e9, "bandwidth_use": tps / batch * 4 * n / 1e9 / BANDWIDTH_GBS,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "first_tokens": runs[0]["first_row"], "runs": len(runs)})
            print(json.dumps(rows[-1]), flush=True)
    # Other users of the 2 cores distort every number: record how busy the machine was.
    out = {"machine": {"cores": os.cpu_count(), "matmul_peak_gflops": peak, "bandwidth_gbs": BANDWIDTH_GBS, "load_before": load_before, "load_after": os.getloadavg()[0]}, "threads": a.threads, "params": n, "new_tokens": a.new_tokens, "rows": rows}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "generate.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n| system | batch | tokens/s | MFU | weight reads GB/s (of {BANDWIDTH_GBS:.0f}) | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['batch']} | {r['tokens_per_s']:.2f} | {r['mfu']:.1%} | {r['weight_read_gbs']:.1f} ({r['bandwidth_use']:.0%}) | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
