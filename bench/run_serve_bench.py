"""Serving load test: requests/s and tokens/s of deploy/serve.py for short and long answers, batched vs sequential.

    python bench/run_serve_bench.py [--clients 1 4 16] [--long_clients 1 16] [--max_tokens 32 256]
                                    [--requests 96] [--max_seconds 90] [--save_baseline]

One random BLOOM (H256 / 4 layers / vocab 8000 unless --hidden etc. say otherwise) exported once
under runs/bench/serve/. Two servers on loopback ports: dynamic batching (--max_batch_size 16) and
sequential (--max_batch_size 1: one request at a time). For each answer length (--max_tokens;
the first at --clients, the others at --long_clients concurrent clients), clients send greedy
completions back to back until --requests are done or --max_seconds pass; the sequential server
runs the first length at the most clients. A random model rarely says EOS, so nearly every answer
is max_tokens long. Long answers are where a server that re-reads the whole context per chunk
falls behind: tokens/s at 256 tokens should not be below 32 (the ratio is printed).
Writes bench/results/serve.json (--output). --save_baseline also writes the rows to
bench/results/serve_baseline.json, the "today" later runs are compared with.
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
from bench.machine import cpu_busy_seconds, wait_quiet  # noqa: E402
from paddlebloom.serving.client import call  # noqa: E402


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (the server: not yet waited for, so rusage misses it)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(a) -> str:
    ckpt, static = (
        os.path.join(a.work_dir, f"{kind}-h{a.hidden}-l{a.layers}-v{a.vocab}") for kind in ("ckpt", "static")
    )
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3")
    if not os.path.isdir(ckpt):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "paddlebloom.create_tiny",
                "--output_dir",
                ckpt,
                "--vocab_size",
                str(a.vocab),
                "--hidden_size",
                str(a.hidden),
                "--n_layer",
                str(a.layers),
                "--n_head",
                str(a.hidden // 32),
                "--seed",
                "0",
            ],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
        )
    if not os.path.isdir(static):
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "export", "export_generation_model.py"),
                "--model_name_or_path",
                ckpt,
                "--output_path",
                os.path.join(static, "bloom"),
            ],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
        )
    return static


def start(model_dir: str, max_batch_size: int):
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "deploy", "serve.py"),
            "--model_dir",
            model_dir,
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--max_batch_size",
            str(max_batch_size),
            "--max_concurrent",
            "64",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"serve.py did not start: {proc.stderr.read()[-2000:]}")
    return proc, line.split(" on ")[1].split()[0].rstrip("/")


def load(base: str, server_pid: int, clients: int, max_tokens: int, a, prompts) -> dict:
    """`clients` threads, each sending one request after the other, until the budget is spent."""
    wait_quiet(0.3, a.quiet_wait)  # other engineers' tests share the 2 cores
    lock, latencies, tokens, errors, per_token = threading.Lock(), [], [0], [], []
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
                status, body = call(
                    base,
                    "POST",
                    "/v1/completions",
                    {"prompt": prompts[n % len(prompts)], "max_tokens": max_tokens, "temperature": 0},
                )
            except OSError as e:  # counted, not fatal: the table shows errors next to throughput
                status, body = type(e).__name__, None
            with lock:
                if status != 200:
                    errors.append(status)
                    continue
                latencies.append(time.perf_counter() - began)
                tokens[0] += body["usage"]["completion_tokens"]
                per_token.append(latencies[-1] / max(1, body["usage"]["completion_tokens"]))

    before = call(base, "GET", "/health")[1]
    busy, ours = cpu_busy_seconds(), _process_cpu_seconds(server_pid) + time.process_time()
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    # cores other processes took meanwhile (the server's and the clients' own CPU excluded)
    foreign = (
        max(0.0, cpu_busy_seconds() - busy - (_process_cpu_seconds(server_pid) + time.process_time() - ours)) / seconds
    )
    after = call(base, "GET", "/health")[1]
    calls = after["program_calls"] - before["program_calls"]
    rows = sum(int(k) * (v - before["batch_sizes"].get(k, 0)) for k, v in after["batch_sizes"].items())
    return {
        "clients": clients,
        "max_tokens": max_tokens,
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "tokens_per_s": tokens[0] / seconds,
        "completion_tokens": tokens[0],
        "mean_latency_s": statistics.mean(latencies) if latencies else None,
        "p90_latency_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))] if latencies else None,
        # what one client waits per token of its answer (queueing and batching included)
        "mean_latency_per_token_ms": 1000 * statistics.mean(per_token) if per_token else None,
        "program_calls": calls,
        "mean_batch": rows / max(1, calls),
        "foreign_cores": foreign,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=96, help="per level (fewer when --max_seconds runs out)")
    p.add_argument("--max_seconds", type=float, default=90.0, help="per level")
    p.add_argument(
        "--max_tokens",
        type=int,
        nargs="+",
        default=[32, 256],
        help="answer lengths; the first is the one --clients and the sequential server run",
    )
    p.add_argument(
        "--long_clients", type=int, nargs="+", default=[1, 16], help="concurrency levels of the other answer lengths"
    )
    p.add_argument(
        "--save_baseline", action="store_true", help="also write the rows as bench/results/serve_baseline.json"
    )
    p.add_argument("--baseline_label", default=None, help="what the baseline measured (default: the git commit)")
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=120,
        help="seconds to wait, before each level, for other processes to leave the cores",
    )
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument(
        "--work_dir",
        default=os.path.join(ROOT, "runs", "bench", "serve"),
        help="where the model and its export are kept between runs",
    )
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "serve.json"))
    a = p.parse_args()
    a.chunk = 1  # the server's default --chunk_tokens: new tokens per streamed event (every step decodes one)
    static = prepare(a)
    from paddlebloom import corpus

    prompts = [" ".join(s.split()[:6]) for s in corpus.sentences(64, seed=3)]
    load_before = os.getloadavg()[0]
    results = {}
    for mode, batch in (("batched", 16), ("sequential", 1)):
        proc, base = start(static, batch)
        try:
            call(base, "POST", "/v1/completions", {"prompt": "warm up", "max_tokens": 4})
            results[mode] = []
            for k, max_tokens in enumerate(a.max_tokens):
                if mode == "sequential" and k > 0:
                    break  # one-at-a-time serving is the reference for the first length only
                levels = (a.clients if k == 0 else a.long_clients) if mode == "batched" else [max(a.clients)]
                for clients in levels:
                    results[mode].append(
                        {"max_batch_size": batch, **load(base, proc.pid, clients, max_tokens, a, prompts)}
                    )
                    print(json.dumps({"mode": mode, **results[mode][-1]}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    top, short = max(a.clients), a.max_tokens[0]
    at = {(r["max_tokens"], r["clients"]): r for r in results["batched"]}
    speedup = at[short, top]["tokens_per_s"] / results["sequential"][0]["tokens_per_s"]
    out = {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_name(),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        },
        "model": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab},
        "max_tokens": a.max_tokens,
        "chunk_tokens": a.chunk,
        "batched": results["batched"],
        "sequential": results["sequential"],
        "batching_speedup_at_max_clients": speedup,
        "long_vs_short": [
            {"max_tokens": n, "clients": c, "ratio": at[n, c]["tokens_per_s"] / at[short, c]["tokens_per_s"]}
            for (n, c) in at
            if n != short and (short, c) in at
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=2)
    if a.save_baseline:
        with open(os.path.join(os.path.dirname(os.path.abspath(a.output)), "serve_baseline.json"), "w") as f:
            json.dump(
                {
                    **out,
                    "commit": a.baseline_label or _commit(),
                    "note": "the serving numbers later runs are compared with",
                },
                f,
                indent=2,
            )
    print(f"batching raises tokens/s {speedup:.2f}x over sequential serving at {top} clients")
    for q in out["long_vs_short"]:
        print(
            f"{q['max_tokens']}-token answers at {q['clients']} clients: {q['ratio']:.2f}x the tokens/s of "
            f"{short}-token answers"
        )


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip() or "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
