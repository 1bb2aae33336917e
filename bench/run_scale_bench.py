"""Scale-out on fleet, measured on this machine's CPUs (gloo over loopback).

    python bench/run_scale_bench.py [--rounds 2] [--steps 3] [--memory_seq 128] [--skip_memory]

1. A data-parallel step (DP=2, shape (a)) with the gradient sum in buckets vs one all-reduce per
   parameter; the two alternate so drifting load hits both; medians.
2. Per-rank memory of full fine-tuning on the bloom-560m shape: one process (what every
   unsharded data-parallel rank holds), DP=2 unsharded when the machine has the memory for two
   such ranks, and DP=2 with --sharding stage1.
Writes bench/results/scale.json and scale.md (bench/write_report.py appends it to BENCHMARKS.md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import SHAPES, params  # noqa: E402

PY = os.path.join(ROOT, ".venv", "bin", "python")
WORKER = os.path.join(ROOT, "bench", "train_parallel.py")


def run(nproc: int, *args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        launcher = (
            ["-m", "paddle.distributed.launch", "--log_dir", os.path.join(tmp, "log"), "--nproc_per_node", str(nproc)]
            if nproc > 1
            else []
        )
        proc = subprocess.run(
            [PY, *launcher, WORKER, *args, "--out", out],
            capture_output=True,
            text=True,
            timeout=3600,
            env=dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3"),
        )
        if proc.returncode != 0 or not os.path.exists(out):
            log = os.path.join(tmp, "log", "workerlog.0")
            tail = open(log, errors="replace").read()[-1500:] if os.path.exists(log) else proc.stderr[-1500:]
            raise RuntimeError(f"train_parallel.py {' '.join(args)} failed:\n{tail}")
        with open(out) as f:
            return json.load(f)


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        return int([line.split()[1] for line in f if line.startswith("MemAvailable")][0]) / 1024


def allreduce_rows(rounds: int, steps: int) -> dict:
    runs = {"bucketed": [], "per_parameter": []}
    for _ in range(rounds):
        runs["bucketed"].append(run(2, "--shape", "a", "--steps", str(steps)))
        runs["per_parameter"].append(run(2, "--shape", "a", "--steps", str(steps), "--per_parameter"))
    rows = {
        mode: {
            "step_s": statistics.median(r["step_s"] for r in rs),
            "sync_s": statistics.median(r["sync_s"] for r in rs),
            "collectives_per_step": rs[0]["collectives_per_step"],
            "runs": len(rs),
        }
        for mode, rs in runs.items()
    }
    return {
        "rows": rows,
        "tokens_per_rank": runs["bucketed"][0]["tokens_per_rank"],
        "sync_ratio": rows["per_parameter"]["sync_s"] / rows["bucketed"]["sync_s"],
        "step_ratio": rows["per_parameter"]["step_s"] / rows["bucketed"]["step_s"],
    }


def memory_rows(seq: int) -> list:
    flags = ["--shape", "b", "--steps", "1", "--seq", str(seq)]
    one = run(1, *flags)
    rows = [{"run": "1 process, no sharding", **one}]
    need = (
        2 * one["ranks"][0]["peak_rss_mb"] + 4096
    )  # headroom: the machine is shared, the OOM killer would pick a bystander too
    if mem_available_mb() > need:
        rows.append({"run": "DP=2, no sharding", **run(2, *flags)})
    else:
        rows.append(
            {
                "run": "DP=2, no sharding",
                "skipped": f"two ranks need ~{need / 1024:.0f} GB, {mem_available_mb() / 1024:.0f} GB available",
            }
        )
    rows.append({"run": "DP=2, --sharding stage1", **run(2, *flags, "--sharding", "stage1")})
    return rows


def markdown(data: dict) -> str:
    lines = [
        "## Scale-out on fleet (CPU, gloo over loopback)",
        "",
        f"Noisy: measured on {os.cpu_count()} cores shared with other jobs; 2 ranks get 1 core each.",
    ]
    if data.get("allreduce"):
        d = data["allreduce"]
        lines += [
            "",
            f"Data-parallel gradient sum, DP=2, shape (a) ({params(SHAPES['a']) / 1e6:.1f}M parameters, "
            f"{d['tokens_per_rank']} tokens per rank), "
            f"median of {d['rows']['bucketed']['runs']} runs x {data['steps']} steps:",
            "",
            "| gradient all-reduce | collectives per step | gradient sum | whole step |",
            "|---|---|---|---|",
        ]
        for mode in ("per_parameter", "bucketed"):
            r = d["rows"][mode]
            lines.append(
                f"| {mode.replace('_', ' ')} | {r['collectives_per_step']} | {r['sync_s'] * 1000:.0f} ms | "
                f"{r['step_s']:.2f} s |"
            )
        lines += [
            "",
            f"Buckets vs per parameter: gradient sum **{d['sync_ratio']:.2f}x** as fast, whole step "
            f"{d['step_ratio']:.2f}x. "
            "The gradient sum is timed after a barrier (communication only; without it, rank 0 also waits for the "
            "other rank's backward). "
            "Gloo runs each collective to completion inside the call, so neither overlaps backward here.",
        ]
    if data.get("memory"):
        lines += [
            "",
            f"Full fine-tuning memory per rank, bloom-560m shape ({params(SHAPES['b']) / 1e6:.0f}M parameters), 1 x "
            f"{data['memory_seq']} tokens, one step:",
            "",
            "| run | optimizer state per rank | peak RSS per rank |",
            "|---|---|---|",
        ]
        for r in data["memory"]:
            if r.get("skipped"):
                lines.append(f"| {r['run']} | skipped: {r['skipped']} | - |")
                continue
            state = " / ".join(f"{x['optimizer_state_bytes'] / 2**30:.2f} GiB" for x in r["ranks"])
            rss = " / ".join(f"{x['peak_rss_mb']:.0f} MB" for x in r["ranks"])
            lines.append(f"| {r['run']} | {state} | {rss} |")
        lines += [
            "",
            "A data-parallel rank without sharding holds what one process holds (plus one 32 MB gradient bucket). "
            "Stage 1 shards only the Adam state (fleet splits whole tensors, so the halves differ by up to one "
            "tensor's state); "
            "stage 2/3 (gradients, parameters) need a GPU in Paddle 3.3.1. bench/run_scale_bench.py.",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--memory_seq",
        type=int,
        default=128,
        help="tokens of the bloom-560m-shaped memory runs (activations stay small beside the state)",
    )
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--skip_allreduce", action="store_true")
    a = p.parse_args()
    results = os.path.join(ROOT, "bench", "results")
    previous = os.path.join(results, "scale.json")
    data = json.load(open(previous)) if os.path.exists(previous) else {}  # a skipped part keeps its last results
    data.update(steps=a.steps, memory_seq=a.memory_seq if not a.skip_memory else data.get("memory_seq", a.memory_seq))
    if not a.skip_allreduce:
        data["allreduce"] = allreduce_rows(a.rounds, a.steps)
        print(json.dumps(data["allreduce"]), flush=True)
    if not a.skip_memory:
        data["memory"] = memory_rows(a.memory_seq)
        print(json.dumps(data["memory"]), flush=True)
    os.makedirs(results, exist_ok=True)
    with open(previous, "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(results, "scale.md"), "w") as f:
        f.write(markdown(data) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
