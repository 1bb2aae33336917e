"""Weight-only int8 / bf16 linear ops vs Paddle's fp32 matmul on bloom-560m shapes (not a test).

    .venv/bin/python bench/run_ops_bench.py [--threads 1,2] [--rows 1,8] [--json OUT]

For each shape, rows M, thread count and weight format it reports the effective weight read
bandwidth (weight bytes / time per call) and its share of the machine's memory read bandwidth,
measured in the same run by pb_stream_sum (a multi-threaded AVX-512/scalar sum over 1 GiB).

Batch-1 decoding reads each weight once per token and the model (560M parameters) is larger than
the last-level cache, so each call here reads a different copy of the weight from a pool larger
than twice the L3 (as a decode step does); a single hot weight would measure cache bandwidth.
Times are taken in dygraph and include Paddle's per-call dispatch (the `dispatch` row).
The machine may be shared: each row waits for other processes' CPU use to drop and reports what
remained ("busy" = cores used by others during the row).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402

from paddlebloom import ops  # noqa: E402
from paddlebloom.ops.quantize import quantize_int8, to_bf16  # noqa: E402

SHAPES = [
    ("qkv", 1024, 3072),
    ("dense", 1024, 1024),
    ("h_to_4h", 1024, 4096),
    ("4h_to_h", 4096, 1024),
    ("lm_head", 1024, 250880),
]


def l3_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 64 << 20


def _cpu_jiffies():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        own = [int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13]]  # utime, stime
    return busy, sum(own)


class Busy:
    """Cores used by other processes while a measurement runs (from /proc, in cores)."""

    def __enter__(self):
        self.t0, (self.b0, self.o0) = time.time(), _cpu_jiffies()
        return self

    def __exit__(self, *exc):
        b1, o1 = _cpu_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        self.cores = max(0.0, ((b1 - self.b0) - (o1 - self.o0)) / hz / max(1e-3, time.time() - self.t0))


def wait_quiet(limit=0.15, patience=60.0):
    deadline = time.time() + patience
    while time.time() < deadline:
        with Busy() as b:
            time.sleep(0.5)
        if b.cores < limit:
            return
        time.sleep(2)


def timed(fn, pool, reps=3, min_calls=20):
    """Best over reps of the mean time per call, cycling through the pool of weights."""
    order = [pool[i % len(pool)] for i in range(max(min_calls, len(pool)))]
    fn(order[0])
    best = float("inf")
    with Busy() as busy:
        for _ in range(reps):
            t0 = time.perf_counter()
            for w in order:
                fn(w)
            best = min(best, (time.perf_counter() - t0) / len(order))
    return best, busy.cores


def set_threads(n):
    ops.set_num_threads(n)
    paddle.base.core.set_num_threads(n)  # Paddle's eager MKL matmul


def stream_bandwidth(m, nt):
    set_threads(nt)
    buf = paddle.ones([1 << 28], dtype="float32")  # 1 GiB
    wait_quiet()
    t, busy = timed(lambda b: m.pb_stream_sum(b), [buf], reps=5, min_calls=1)
    return buf.numel().item() * 4 / t / 1e9, busy


def run(args):
    m = ops.load()
    rng = np.random.default_rng(0)
    pool_bytes = 2 * l3_bytes() + (64 << 20)
    rows, info = [], ops.info()
    print(f"# {info}  L3 {l3_bytes() >> 20} MiB, weight pools >= {pool_bytes >> 20} MiB per format")
    bw = {}
    for nt in args.threads:
        bw[nt] = stream_bandwidth(m, nt)
        print(f"memory read bandwidth, {nt} thread(s): {bw[nt][0]:.1f} GB/s (busy {bw[nt][1]:.2f})", flush=True)
    set_threads(1)
    x1 = paddle.to_tensor(rng.standard_normal((1, 64), dtype=np.float32))
    w1, s1 = (paddle.to_tensor(a) for a in quantize_int8(rng.normal(0, 0.02, (64, 64))))
    t, _ = timed(lambda w: m.weight_only_linear_int8(x1, w, s1, None), [w1], min_calls=2000)
    print(f"dispatch: one call on a 64x64 int8 weight takes {t * 1e6:.1f} us (dygraph overhead)")
    print(
        f"{'shape':8} {'K':>5} {'N':>6} {'M':>2} {'thr':>3} {'format':6} {'us/call':>9} {'GB/s':>6} {'%bw':>5} "
        f"{'busy':>5}"
    )
    for name, K, N in SHAPES:
        if args.shapes and name not in args.shapes:
            continue
        w32 = rng.normal(0, 0.02, (N, K)).astype(np.float32)
        q, scale = quantize_int8(w32)
        fmts = {
            "int8": (
                N * K,
                lambda: paddle.to_tensor(q),
                lambda x, w, s=paddle.to_tensor(scale): m.weight_only_linear_int8(x, w, s, None),
            ),
            "bf16": (2 * N * K, lambda: to_bf16(w32), lambda x, w: m.weight_only_linear_bf16(x, w, None)),
            "fp32": (4 * N * K, lambda: paddle.to_tensor(w32.T.copy()), lambda x, w: paddle.matmul(x, w)),
        }
        for fmt, (nbytes, make, call) in fmts.items():
            if args.formats and fmt not in args.formats:
                continue
            pool = [make() for _ in range(max(1, -(-pool_bytes // nbytes)))]
            for M in args.rows:
                x = paddle.to_tensor(rng.standard_normal((M, K), dtype=np.float32))
                for nt in args.threads:
                    set_threads(nt)
                    wait_quiet()
                    t, busy = timed(lambda w: call(x, w), pool)
                    gbs = nbytes / t / 1e9
                    row = dict(
                        shape=name,
                        K=K,
                        N=N,
                        M=M,
                        threads=nt,
                        format=fmt,
                        us=t * 1e6,
                        gbs=gbs,
                        pct_bw=100 * gbs / bw[nt][0],
                        busy=busy,
                        gflops=2 * M * N * K / t / 1e9,
                    )
                    rows.append(row)
                    print(
                        f"{name:8} {K:5} {N:6} {M:2} {nt:3} {fmt:6} {t * 1e6:9.0f} {gbs:6.1f} {row['pct_bw']:5.0f} "
                        f"{busy:5.2f}",
                        flush=True,
                    )
            del pool
    # Thread scaling where compute, not memory, bounds the call: one hot weight, M=64 rows.
    K, N, M = 1024, 3072, 64
    w32 = rng.normal(0, 0.02, (N, K)).astype(np.float32)
    q, scale = (paddle.to_tensor(a) for a in quantize_int8(w32))
    wb, x = to_bf16(w32), paddle.to_tensor(rng.standard_normal((M, K), dtype=np.float32))
    for fmt, call in (
        ("int8", lambda w: m.weight_only_linear_int8(x, w, scale, None)),
        ("bf16", lambda w: m.weight_only_linear_bf16(x, w, None)),
    ):
        t = {}
        for nt in args.threads:
            set_threads(nt)
            wait_quiet()
            t[nt], busy = timed(call, [q if fmt == "int8" else wb], reps=5)
            rows.append(
                dict(
                    shape="compute",
                    K=K,
                    N=N,
                    M=M,
                    threads=nt,
                    format=fmt,
                    us=t[nt] * 1e6,
                    gflops=2 * M * N * K / t[nt] / 1e9,
                    busy=busy,
                )
            )
        first = args.threads[0]
        print(
            f"compute-bound {fmt} M={M} K={K} N={N} (hot weight): "
            + ", ".join(
                f"{nt} thr {2 * M * N * K / t[nt] / 1e9:.0f} GFLOP/s ({t[first] / t[nt]:.2f}x)" for nt in args.threads
            ),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "bandwidth": {str(k): v[0] for k, v in bw.items()}, "rows": rows}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--threads", type=ints, default=[1, 2])
    p.add_argument("--rows", type=ints, default=[1, 8])
    p.add_argument(
        "--shapes", type=lambda s: s.split(","), default=None, help="subset of " + ",".join(s[0] for s in SHAPES)
    )
    p.add_argument("--formats", type=lambda s: s.split(","), default=None, help="subset of int8,bf16,fp32")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--isa", default=None, help="force a kernel family (PADDLEBLOOM_ISA): scalar, avx2, avx512, vnni")
    args = p.parse_args()
    if args.isa:
        os.environ["PADDLEBLOOM_ISA"] = args.isa
    run(args)


if __name__ == "__main__":
    main()
