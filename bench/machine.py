"""What this machine can do, measured now: CPU model and the flags that decide which kernels run,
memory read bandwidth with every core, and the fp32 matmul peak.

    python bench/machine.py            # prints one JSON object

Why measure instead of a constant: the machines these benchmarks run on differ by session
(read bandwidth measured at 28 GB/s on one, 76 GB/s on another), and batch-1 decoding is bound by how fast the
weights stream from memory, so "share of the bandwidth limit" is only meaningful against the
bandwidth of the machine the numbers came from.

No framework import at module level: the orchestrators import this from either venv, and each
measurement runs in a fresh process of the venv that has the library it needs.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, ".venv", "bin", "python")
PEER = os.path.join(ROOT, ".venv-hf", "bin", "python")

# The flags that decide which kernels oneDNN / MKL / CTranslate2 / torch can pick.
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

# torch over 1 GiB float32 tensors: pure reads, vectorised and split over the threads by ATen.
# `dot` of two tensors (8 bytes read per element) measured the highest here (33 vs 27 GB/s for
# `sum`, Xeon, 2 threads), so both are taken and the higher wins. Best of several passes: a pass
# that meets another process's burst understates.
TORCH_BANDWIDTH = """
import json, time, torch
torch.set_num_threads({threads})
x, y = torch.ones(1 << 28), torch.ones(1 << 28)  # 1 GiB each, pages touched before timing
rates = {{}}
for name, f, nbytes in (("sum", lambda: x.sum(), 4 << 28), ("dot", lambda: torch.dot(x, y), 8 << 28)):
    f()
    for _ in range({passes}):
        began = time.perf_counter(); f(); seconds = time.perf_counter() - began
        rates[name] = max(rates.get(name, 0.0), nbytes / seconds / 1e9)
print(json.dumps(rates))
"""

# numpy sums on one thread only, so one process per core, each over its own 512 MiB, started
# together at a barrier; the rate is all bytes over the slowest process's time.
NUMPY_BANDWIDTH = """
import multiprocessing as mp, time, numpy as np
def work(barrier, out, k, n, passes):
    x = np.ones(n, dtype=np.float32); x.sum()
    best = 1e9
    for _ in range(passes):
        barrier.wait(); began = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - began)
    out[k] = best
if __name__ == "__main__":
    procs, n = {threads}, (1 << 28) // {threads}
    barrier, out = mp.Barrier(procs), mp.Array("d", procs)
    ps = [mp.Process(target=work, args=(barrier, out, k, n, {passes})) for k in range(procs)]
    [p.start() for p in ps]; [p.join() for p in ps]
    print(procs * n * 4 / max(out) / 1e9)
"""


def cpu_facts() -> dict:
    """Model name, core count and the kernel-relevant flags, from /proc/cpuinfo."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": {name: name in flags for name in FLAGS}}


def cpu_busy_seconds() -> float:
    """CPU seconds every process on the machine has spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_cores: float, max_wait: float) -> float:
    """Wait (up to max_wait s) until other processes use at most max_cores, measured over 2 s
    windows: other engineers' tests share these 2 cores, and torch's OpenMP collapses (5-10x
    slower) when a thread of it has to share a core. Returns the seconds waited."""
    began = time.perf_counter()
    while True:
        busy = cpu_busy_seconds()
        time.sleep(2.0)
        if (cpu_busy_seconds() - busy) / 2.0 <= max_cores or time.perf_counter() - began >= max_wait:
            return time.perf_counter() - began


def _run(python: str, code: str):
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=600, env=dict(os.environ, GLOG_minloglevel="3")
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_bandwidth(threads: int = 0, passes: int = 8, repeats: int = 3) -> dict:
    """Read bandwidth in GB/s with `threads` cores (default all), by several methods; the highest
    is the limit reported (a reduction can only understate what the memory system delivers).
    `repeats` fresh processes: on these VMs one process's result swings 18-34 GB/s run to run."""
    threads = threads or os.cpu_count() or 1
    wait_quiet(0.3, 60)  # another process's memory traffic would be subtracted from ours
    methods = {}
    if os.path.exists(PEER):
        try:
            for _ in range(repeats):
                for op, rate in _run(PEER, TORCH_BANDWIDTH.format(threads=threads, passes=passes)).items():
                    key = f"torch {op} over 1 GiB float32 tensors, {threads} threads"
                    methods[key] = max(methods.get(key, 0.0), rate)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            methods["torch failed"] = str(e)
    python = OURS if os.path.exists(OURS) else sys.executable
    try:
        methods[f"numpy sum of 1 GiB float32 in {threads} processes"] = _run(
            python, NUMPY_BANDWIDTH.format(threads=threads, passes=passes)
        )
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        methods["numpy failed"] = str(e)
    measured = {k: v for k, v in methods.items() if isinstance(v, float)}
    if not measured:
        raise RuntimeError(f"memory bandwidth: no method worked: {methods}")
    best = max(measured, key=measured.get)
    return {"bandwidth_gbs": measured[best], "bandwidth_method": best, "bandwidth_by_method": methods}


def matmul_peaks() -> dict:
    """fp32 matmul GFLOP/s of each framework, as the training bench measures it (best of three)."""
    sys.path.insert(0, ROOT)
    from bench.run_train_bench import matmul_peak  # lazily: it sets up MKL for Paddle children

    peaks = {}
    for name, python in (("paddle_fp32_gflops", OURS), ("torch_fp32_gflops", PEER)):
        if os.path.exists(python):
            try:
                peaks[name] = matmul_peak(python)
            except (IndexError, ValueError):  # the snippet failed: no number, not a crash
                peaks[name] = None
    numbers = [v for v in peaks.values() if v]
    return {**peaks, "matmul_peak_gflops": max(numbers) if numbers else None}


def measure(matmul: bool = True) -> dict:
    return {**cpu_facts(), **memory_bandwidth(), **(matmul_peaks() if matmul else {})}


if __name__ == "__main__":
    print(json.dumps(measure("--no_matmul" not in sys.argv), indent=2))
