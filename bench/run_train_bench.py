"""Training speed, side by side with the peer (HF transformers + peft on torch CPU), one run.

    python bench/run_train_bench.py [--rounds 2] [--shapes a b] [--steps 3]

Each measurement is a fresh process (so peak RSS is its own); the two systems alternate
(ours, peer, ours, peer ...) so drifting machine load hits both; medians are reported.
Writes bench/results/train.json; bench/write_report.py turns results into BENCHMARKS.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import SHAPES, params, train_flops_per_token  # noqa: E402
from paddlebloom.workarounds import prefer_avx2_mkl_on_amd  # noqa: E402

# Same environment for both systems and for the peak measurement (children inherit it).
prefer_avx2_mkl_on_amd()

OURS = os.path.join(ROOT, ".venv", "bin", "python")
PEER = os.path.join(ROOT, ".venv-hf", "bin", "python")

MATMUL_PEAK = {
    OURS: "import time,paddle; paddle.base.core.set_num_threads({t}); a=paddle.randn([2048,2048]); "
    "b=paddle.randn([2048,2048]); [paddle.matmul(a,b) for _ in range(2)]; s=time.time(); "
    "[paddle.matmul(a,b) for _ in range(10)]; paddle.matmul(a,b).numpy(); print(2*2048**3*10/(time.time()-s)/1e9)",
    PEER: "import time,torch; torch.set_num_threads({t}); a=torch.randn(2048,2048); b=torch.randn(2048,2048); "
    "[a@b for _ in range(2)]; s=time.time(); [a@b for _ in range(10)]; print(2*2048**3*10/(time.time()-s)/1e9)",
}


def run(python: str, script: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3")
    proc = subprocess.run(
        [python, os.path.join(ROOT, "bench", script), *args], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak(python: str, samples: int = 3) -> float:
    """Best of a few fresh-process samples: one sample caught at a busy moment understates the
    peak (torch once measured 103 instead of ~180 GFLOP/s) and so inflates every MFU."""
    threads = os.cpu_count() or 1
    best = 0.0
    for _ in range(samples):
        out = subprocess.run(
            [python, "-c", MATMUL_PEAK[python].format(t=threads)],
            capture_output=True,
            text=True,
            env=dict(os.environ, GLOG_minloglevel="3"),
        )
        best = max(best, float(out.stdout.strip().splitlines()[-1]))
    return best


def earlier_rows(path: str, rerun_shapes) -> dict:
    """Rows (and recompute results) of shapes this run does not measure, from the previous file."""
    if not os.path.exists(path):
        return {"rows": [], "recompute": []}
    with open(path) as f:
        old = json.load(f)
    return {
        "rows": [r for r in old.get("rows", []) if r["shape"] not in rerun_shapes],
        "recompute": [] if "b" in rerun_shapes else old.get("recompute", []),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shapes", nargs="+", default=["a", "b"], choices=sorted(SHAPES))
    a = p.parse_args()
    peaks = {"paddle_fp32_gflops": matmul_peak(OURS), "torch_fp32_gflops": matmul_peak(PEER)}
    machine_peak = max(peaks.values())
    rows = []
    for shape in a.shapes:
        steps = a.steps if shape == "a" else max(2, a.steps - 1)
        for method in ("full", "lora"):
            runs = {"paddlebloom": [], "hf+peft": []}
            for _ in range(a.rounds):
                runs["paddlebloom"].append(
                    run(OURS, "train_ours.py", "--shape", shape, "--method", method, "--steps", str(steps))
                )
                runs["hf+peft"].append(
                    run(PEER, "train_hf.py", "--shape", shape, "--method", method, "--steps", str(steps))
                )
            for system, results in runs.items():
                tps = statistics.median(r["tokens_per_s"] for r in results)
                rows.append(
                    {
                        "shape": shape,
                        "method": method,
                        "system": system,
                        "tokens_per_s": tps,
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                        "mfu": tps * train_flops_per_token(SHAPES[shape], method) / (machine_peak * 1e9),
                        "runs": len(results),
                    }
                )
            print(json.dumps(rows[-2:]), flush=True)
    recompute = []
    if "b" in a.shapes:
        for flag in ([], ["--recompute"]):
            r = run(OURS, "train_ours.py", "--shape", "b", "--method", "full", "--steps", "1", *flag)
            recompute.append(
                {"recompute": bool(flag), "peak_rss_mb": r["peak_rss_mb"], "tokens_per_s": r["tokens_per_s"]}
            )
    path = os.path.join(ROOT, "bench", "results", "train.json")
    kept = earlier_rows(path, a.shapes)  # a run of some shapes keeps the others' results
    rows = kept["rows"] + rows
    for r in rows:  # one peak for every row, this run's
        r["mfu"] = r["tokens_per_s"] * train_flops_per_token(SHAPES[r["shape"]], r["method"]) / (machine_peak * 1e9)
    out = {
        "machine": {"cores": os.cpu_count(), **peaks},
        "params": {k: params(v) for k, v in SHAPES.items()},
        "rows": rows,
        "recompute": recompute or kept["recompute"],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
