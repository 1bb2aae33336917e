"""Decoding speed of ours against the peers users pick, all measured in the same run on one machine.

    python bench/run_generate_bench.py [--rounds 1] [--batches 1 8] [--new_tokens 64] [--systems KEY ...]

Systems (keys): ours static fp32 (paddle.inference), ours static fp32 with oneDNN, ours bf16
export, ours weight-only int8 export, ours dynamic (eager); HF transformers torch fp32 and bf16;
CTranslate2 float32 and int8. All run the same random bloom-560m-shaped model (one checkpoint,
exported / converted by bench/generate_models.py), the same prompts (32 random tokens), greedy,
EOS off so every run makes exactly --new_tokens per row, --threads math threads each. Every
measurement is a fresh process; systems alternate within a round so drifting load hits all.

A system whose model cannot be built or whose run fails becomes a row with the one-line reason
and the bench goes on. The machine is measured in the same run (bench/machine.py): CPU flags,
memory read bandwidth (before and after the measurements; the higher is the limit) and the matmul
peak; each run also records how much CPU other processes took meanwhile, so a reader can judge
a number taken on a busy machine. Writes bench/results/generate.json and prints the table
(bench/write_report.py's decoding section) with the ratios the goals are stated in.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import machine  # noqa: E402
from bench.common import SHAPES, params  # noqa: E402
from bench.generate_models import one_line, prepare  # noqa: E402

OURS, PEER = machine.OURS, machine.PEER

# key: (label, family, python, worker, model artefact, worker flags, bytes per weight).
# Bytes per weight: what one decode step streams per parameter (int8: the per-channel fp32 scales
# are ~0.1% of the weights and counted as nothing).
SYSTEMS = {
    "ours-static": (
        "ours static (paddle.inference fp32)",
        "ours",
        OURS,
        "generate_ours.py",
        "static",
        ["--mode", "static"],
        4,
    ),
    "ours-static-onednn": (
        "ours static (paddle.inference fp32, oneDNN)",
        "ours",
        OURS,
        "generate_ours.py",
        "static",
        ["--mode", "static", "--enable_mkldnn"],
        4,
    ),
    # bf16 weights, fp32 arithmetic (the export's own op; --precision bf16 is oneDNN's conversion of an fp32 program).
    "ours-bf16": ("ours bf16-weight export", "ours", OURS, "generate_ours.py", "static-bf16", ["--mode", "static"], 2),
    "ours-int8": (
        "ours weight-only int8 export",
        "ours",
        OURS,
        "generate_ours.py",
        "static-int8",
        ["--mode", "static", "--precision", "int8"],
        1,
    ),
    "ours-dynamic": (
        "ours dynamic (paddle eager fp32)",
        "ours",
        OURS,
        "generate_ours.py",
        "ckpt",
        ["--mode", "dynamic"],
        4,
    ),
    "hf-fp32": ("HF transformers (torch fp32)", "hf", PEER, "generate_hf.py", "hf", ["--dtype", "float32"], 4),
    "hf-bf16": ("HF transformers (torch bf16)", "hf", PEER, "generate_hf.py", "hf", ["--dtype", "bfloat16"], 2),
    "ct2-fp32": (
        "CTranslate2 float32",
        "ct2",
        PEER,
        "generate_ct2.py",
        "ct2-float32",
        ["--compute_type", "float32"],
        4,
    ),
    "ct2-int8": ("CTranslate2 int8", "ct2", PEER, "generate_ct2.py", "ct2-int8", ["--compute_type", "int8"], 1),
}
OURS_FP32_STATIC = ("ours-static", "ours-static-onednn")
# Greedy tokens of these must equal ours fp32 (same weights, fp32 arithmetic): a sanity check that
# every system decodes the same model, not a speed number of a different one.
FP32_CHECKED = ("ours-dynamic", "hf-fp32", "ct2-fp32")


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_worker(python: str, script: str, args, threads: int, timeout: float) -> dict:
    """One measurement in a fresh process; its JSON line plus how busy the rest of the machine was.
    Raises RuntimeError with the one line that says why, when the worker fails."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3", OMP_NUM_THREADS=str(threads))
    busy, mine, load1, began = (
        machine.cpu_busy_seconds(),
        children_cpu_seconds(),
        os.getloadavg()[0],
        time.perf_counter(),
    )
    proc = subprocess.run(
        [python, os.path.join(ROOT, "bench", script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(one_line(proc.stderr) if proc.stderr.strip() else f"exit {proc.returncode}")
    lines = [s for s in proc.stdout.strip().splitlines() if s.startswith("{")]
    if not lines:
        raise RuntimeError(f"no result line: {one_line(proc.stdout + proc.stderr)}")
    # Cores other processes kept busy while this worker ran (whole run, loading included).
    foreign = max(0.0, (machine.cpu_busy_seconds() - busy) - (children_cpu_seconds() - mine)) / wall
    return {**json.loads(lines[-1]), "load1_before": load1, "foreign_cores": foreign}


def summarise(key: str, batch: int, runs: list, errors: list, n: int, flops_per_token: float, facts: dict) -> dict:
    label, family, *_, nbytes = SYSTEMS[key]
    row = {"key": key, "system": label, "family": family, "batch": batch, "bytes_per_weight": nbytes, "runs": len(runs)}
    if not runs:
        return {**row, "tokens_per_s": None, "error": errors[0] if errors else "not run"}
    tps = statistics.median(r["tokens_per_s"] for r in runs)
    weight_gbs = tps / batch * nbytes * n / 1e9  # every decode step reads every weight once, whatever the batch
    peak = facts.get("matmul_peak_gflops")
    return {
        **row,
        "tokens_per_s": tps,
        "all_tokens_per_s": [r["tokens_per_s"] for r in runs],
        "weight_read_gbs": weight_gbs,
        "bandwidth_share": weight_gbs / facts["bandwidth_gbs"],
        "mfu": tps * flops_per_token / (peak * 1e9) if peak else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "first_tokens": runs[0]["first_row"],
        "first_tokens_all": runs[0].get("first_tokens_all"),
        "compute_type": runs[0].get("compute_type"),
        "foreign_cores": max(r["foreign_cores"] for r in runs),
        "load1_before": [r["load1_before"] for r in runs],
        "error": errors[0] if errors else None,
    }


def check_tokens(rows: list) -> None:
    """Mark each row whose greedy tokens differ from ours fp32 static at the same batch."""
    for batch in {r["batch"] for r in rows}:
        ref = next(
            (
                r
                for k in OURS_FP32_STATIC + ("ours-dynamic",)
                for r in rows
                if r["key"] == k and r["batch"] == batch and r["tokens_per_s"]
            ),
            None,
        )
        for r in rows:
            if r["batch"] != batch or not r["tokens_per_s"] or ref is None or r is ref:
                continue
            mine, theirs = (
                r.get("first_tokens_all") or [r["first_tokens"]],
                ref.get("first_tokens_all") or [ref["first_tokens"]],
            )
            r["matches_ours_fp32"] = mine == theirs
            fp32 = r["key"] in FP32_CHECKED or r["key"] in OURS_FP32_STATIC
            if not r["matches_ours_fp32"] and fp32:
                r["warning"] = f"greedy tokens differ from {ref['system']}"


def ratios(rows: list, batches) -> list:
    """The comparisons the goals are stated in (issue: decoding vs the peers users pick)."""

    def best(keys, batch):
        found = [r for r in rows if r["key"] in keys and r["batch"] == batch and r["tokens_per_s"]]
        return max(found, key=lambda r: r["tokens_per_s"]) if found else None

    ours_all = [k for k, s in SYSTEMS.items() if s[1] == "ours"]
    specs = [
        ("fastest ours / CTranslate2 int8", ours_all, ("ct2-int8",), {1: 1.5, 8: 1.2}),
        ("ours fp32 static / CTranslate2 float32", OURS_FP32_STATIC, ("ct2-fp32",), {b: 1.0 for b in batches}),
        ("fastest ours / HF torch bf16", ours_all, ("hf-bf16",), {}),
        ("fastest ours / HF torch fp32", ours_all, ("hf-fp32",), {}),
    ]
    out = []
    for name, ours, peer, goals in specs:
        for batch in batches:
            a, b = best(ours, batch), best(peer, batch)
            ratio = a["tokens_per_s"] / b["tokens_per_s"] if a and b else None
            goal = goals.get(batch)
            out.append(
                {
                    "name": name,
                    "batch": batch,
                    "ratio": ratio,
                    "ours": a["system"] if a else None,
                    "peer": b["system"] if b else None,
                    "goal": goal,
                    "met": (ratio >= goal) if ratio is not None and goal else None,
                }
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--threads", type=int, default=2, help="math threads per system")
    p.add_argument(
        "--busy_retries",
        type=int,
        default=2,
        help="re-run a measurement when other processes took more than --busy_cores meanwhile",
    )
    p.add_argument("--busy_cores", type=float, default=0.3)
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=120,
        help="seconds to wait, before each measurement, for other processes to leave the cores",
    )
    p.add_argument("--timeout", type=float, default=1200, help="seconds per measurement")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "generate.json"))
    a = p.parse_args()
    load_before = os.getloadavg()
    dirs = prepare({SYSTEMS[k][4] for k in a.systems})
    print(json.dumps({"models": dirs}, indent=2), flush=True)
    # Measured after the models exist (their building loads the machine), before the decoding runs.
    facts = machine.measure()
    print(json.dumps({"machine": facts}), flush=True)
    n, shape = params(SHAPES["b"]), SHAPES["b"]
    context = 32 + a.new_tokens / 2  # mean attended length
    flops_per_token = 2 * n + 4 * shape["layers"] * context * shape["hidden"]
    rows = []
    for batch in a.batches:
        runs = {k: [] for k in a.systems}
        errors = {k: [] for k in a.systems}
        for _ in range(a.rounds):
            for key in a.systems:
                label, _, python, script, artefact, flags, _ = SYSTEMS[key]
                model_dir = dirs[artefact]
                if model_dir.startswith("failed"):
                    errors[key].append(f"model: {model_dir}")
                    continue
                args = [
                    *flags,
                    "--model_dir",
                    model_dir,
                    "--batch",
                    str(batch),
                    "--new_tokens",
                    str(a.new_tokens),
                    "--threads",
                    str(a.threads),
                ]
                for attempt in range(1 + a.busy_retries):
                    machine.wait_quiet(a.busy_cores, a.quiet_wait)
                    try:
                        result = run_worker(python, script, args, a.threads, a.timeout)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                        errors[key].append(f"failed: {one_line(str(e))}")
                        break
                    if result["foreign_cores"] <= a.busy_cores or attempt == a.busy_retries:
                        runs[key].append(result)
                        break
                    print(
                        f"  {label}: other processes took {result['foreign_cores']:.2f} cores; measuring again",
                        flush=True,
                    )
        for key in a.systems:
            rows.append(summarise(key, batch, runs[key], errors[key], n, flops_per_token, facts))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "first_tokens_all"}), flush=True)
    check_tokens(rows)
    # Bandwidth again after the runs: the limit is the higher of the two (a reduction can only
    # understate it), and both are kept so a reader sees how much it moved.
    after = machine.memory_bandwidth()
    facts["bandwidth_before_gbs"], facts["bandwidth_after_gbs"] = facts["bandwidth_gbs"], after["bandwidth_gbs"]
    if after["bandwidth_gbs"] > facts["bandwidth_gbs"]:
        facts.update(bandwidth_gbs=after["bandwidth_gbs"], bandwidth_method=after["bandwidth_method"])
        for r in rows:
            if r["tokens_per_s"]:
                r["bandwidth_share"] = r["weight_read_gbs"] / facts["bandwidth_gbs"]
    facts.update(
        load_before=load_before[0],
        load_after=os.getloadavg()[0],
        load_before_1_5_15=load_before,
        load_after_1_5_15=os.getloadavg(),
    )
    out = {
        "machine": facts,
        "threads": a.threads,
        "params": n,
        "new_tokens": a.new_tokens,
        "prompt_tokens": 32,
        "rounds": a.rounds,
        "rows": rows,
        "ratios": ratios(rows, a.batches),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=2)
    from bench.write_report import generation_section

    print("\n" + generation_section(out))


if __name__ == "__main__":
    main()
