"""Serving load test: requests/s and tokens/s of deploy/serve.py at 1, 4 and 16 concurrent clients, batched vs sequential.

    python bench/run_serve_bench.py [--clients 1 4 16] [--requests 96] [--max_seconds 90] [--max_tokens 32]

One random BLOOM (H256 / 4 layers / vocab 8000 unless --hidden etc. say otherwise) exported once
under runs/bench/serve/. Two servers on loopback ports: dynamic batching (--max_batch_size 16) and
sequential (--max_batch_size 1: one request at a time). At each concurrency level, clients send
greedy completions back to back until --requests are done or --max_seconds pass. A random model
rarely says EOS, so nearly every answer is --max_tokens long. Writes bench/results/serve.json (--output).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from paddlebloom.serving.client import call  # noqa: E402



def prepare(a) -> str:
    ckpt, static = (os.path.join(a.work_dir, f"{kind}-h{a.hidden}-l{a.layers}-v{a.vocab}") for kind in ("ckpt", "static"))
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3")
    if not os.path.isdir(ckpt):
        subprocess.run([sys.executable, "-m", "paddlebloom.create_tiny", "--output_dir", ckpt, "--vocab_size", str(a.vocab), "--hidden_size", str(a.hidden),
                        "--n_layer", str(a.layers), "--n_head", str(a.hidden // 32), "--seed", "0"], check=True, env=env, cwd=ROOT, capture_output=True)
    if not os.path.isdir(static):
        subprocess.run([sys.executable, os.path.join(ROOT, "export", "export_generation_model.py"), "--model_name_or_path", ckpt, "--output_path",
                        os.path.join(static, "bloom")], check=True, env=env, cwd=ROOT, capture_output=True)
    return static


def start(model_dir: str, max_batch_size: int):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "deploy", "serve.py"), "--model_dir", model_dir, "--port", "0", "--host", "127.0.0.1",
                             "--max_batch_size", str(max_batch_size), "--max_concurrent", "64"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"serve.py did not start: {proc.stderr.read()[-2000:]}")
    return proc, line.split(" on ")[1].split()[0].rstrip("/")


def load(base: str, clients: int, a, prompts) -> dict:
    """`clients` threads, each sending one request after the other, until the budget is spent."""
    lock, latencies, tokens, errors = threading.Lock(), [], [0], []
    issued = [0]
    deadline = time.perf_counter() + a.max_seconds

    def client(k):
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= a.requests:
                    return
                n = issued[0]
                issued[0] += 1
            began = time.perf_counter()
            try:
                status, body = call(base, "POST", "/v1/completions", {"prompt": prompts[n % len(prompts)], "max_tokens": a.max_tokens, "temperature": 0})
            except OSError as e:  # counted, not fatal: the table shows errors next to throughput
                status, body = type(e).__name__, None
            with lock:
                if status != 200:
                    errors.append(status)
                    continue
                latencies.append(time.perf_counter() - began)
                tokens[0] += body["usage"]["completion_tokens"]

    before = call(base, "GET", "/health")[1]
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    after = call(base, "GET", "/health")[1]
    calls = after["program_calls"] - before["program_calls"]
    rows = sum(int(k) * (v - before["batch_sizes"].get(k, 0)) for k, v in after["batch_sizes"].items())
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": seconds, "requests_per_s": len(latencies) / seconds,
            "tokens_per_s": tokens[0] / seconds, "completion_tokens": tokens[0], "mean_latency_s": statistics.mean(latencies) if latencies else None,
            "p90_latency_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))] if latencies else None,
            "program_calls": calls, "mean_batch": rows / max(1, calls)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=96, help="per level (fewer when --max_seconds runs out)")
    p.add_argument("--max_seconds", type=float, default=90.0, help="per level")
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "bench", "serve"), help="where the model and its export are kept between runs")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "serve.json"))
    a = p.parse_args()
    a.chunk = 8  # the server's default --chunk_tokens (for the report)
    static = prepare(a)
    from paddlebloom import corpus

    prompts = [" ".join(s.split()[:6]) for s in corpus.sentences(64, seed=3)]
    load_before = os.getloadavg()[0]
    results = {}
    for mode, batch in (("batched", 16), ("sequential", 1)):
        proc, base = start(static, batch)
        try:
            call(base, "POST", "/v1/completions", {"prompt": "warm up", "max_tokens": 4})
            levels = a.clients if mode == "batched" else [max(a.clients)]
            results[mode] = []
            for clients in levels:
                results[mode].append({"max_batch_size": batch, **load(base, clients, a, prompts)})
                print(json.dumps({"mode": mode, **results[mode][-1]}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    top = max(a.clients)
    speedup = next(r for r in results["batched"] if r["clients"] == top)["tokens_per_s"] / results["sequential"][0]["tokens_per_s"]
    out = {"machine": {"cores": os.cpu_count(), "cpu": _cpu_name(), "load_before": load_before, "load_after": os.getloadavg()[0]},
           "model": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab}, "max_tokens": a.max_tokens, "chunk_tokens": a.chunk,
           "batched": results["batched"], "sequential": results["sequential"], "batching_speedup_at_max_clients": speedup}
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"batching raises tokens/s {speedup:.2f}x over sequential serving at {top} clients")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
