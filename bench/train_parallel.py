"""One benchmark run of the trainer's step, data parallel under the launcher (or in one process).

    python -m paddle.distributed.launch --nproc_per_node 2 bench/train_parallel.py --shape a --steps 3 --out R.json
        [--per_parameter] [--sharding stage1] [--seq 128]
Rank 0 writes one JSON: the median step time, the time and number of collectives of the
data-parallel gradient sum, and every rank's peak RSS and optimizer-state bytes.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

import paddlebloom.training.trainer as trainer  # noqa: E402
from bench.common import SHAPES, peak_rss_mb  # noqa: E402
from paddlebloom.config import BloomConfig  # noqa: E402
from paddlebloom.model import BloomForCausalLM  # noqa: E402
from paddlebloom.runtime import init_parallel, quiet, use_all_cores, world_size  # noqa: E402
from paddlebloom.training import optim  # noqa: E402
from paddlebloom.training.arguments import parse_args  # noqa: E402
from paddlebloom.training.sharding import optimizer_state_bytes, resolve_sharding_degree  # noqa: E402


def per_parameter_all_reduce(params, group, bucket_bytes=None) -> int:
    """The baseline: one collective per gradient tensor (the trainer before buckets)."""
    count = 0
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seq", type=int, default=0, help="tokens per row (default: the shape's)")
    p.add_argument("--per_parameter", action="store_true", help="one all-reduce per gradient instead of buckets")
    p.add_argument("--sharding", default="")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    quiet()
    use_all_cores()
    args = parse_args(
        [
            "--model_name_or_path",
            "-",
            "--output_dir",
            "-",
            "--train_file",
            "-",
            "--learning_rate",
            "1e-4",
            "--sharding",
            a.sharding,
        ]
    )
    ctx = init_parallel(1, resolve_sharding_degree(args))
    s = SHAPES[a.shape]
    seq = a.seq or s["seq"]
    paddle.seed(0)
    model = BloomForCausalLM(
        BloomConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], n_layer=s["layers"], n_head=s["heads"]),
        parallel=ctx,
    )
    model.train()
    optimizer, _, named = optim.build_optimizer(model, args, 100)

    reduce = per_parameter_all_reduce if a.per_parameter else optim.all_reduce_in_buckets
    sync = {"s": 0.0, "collectives": 0}

    def counted_reduce(params, group, *rest, **kw):
        dist.barrier(group=group)  # time the communication, not the wait for a rank still in backward
        t = time.perf_counter()
        sync["collectives"] += reduce(params, group, *rest, **kw)
        sync["s"] += time.perf_counter() - t

    optim.all_reduce_in_buckets = counted_reduce  # what sum_gradients_over_data_parallel calls
    ids = np.random.RandomState(ctx.data_rank).randint(4, s["vocab"], size=(s["batch"], seq + 1)).astype(np.int64)
    batch = [(ids[:, :-1], np.ones_like(ids[:, :-1]), ids[:, 1:])]
    steps, syncs = [], []
    for _ in range(a.steps + 1):  # the first step warms up (allocations, Adam state)
        sync.update(s=0.0, collectives=0)
        t = time.perf_counter()
        trainer.train_step(model, optimizer, named, batch, args)
        steps.append(time.perf_counter() - t)
        syncs.append(sync["s"])
    mine = {"peak_rss_mb": peak_rss_mb(), "optimizer_state_bytes": optimizer_state_bytes(optimizer)}
    ranks = [mine]
    if world_size() > 1:
        ranks = []
        dist.all_gather_object(ranks, mine)
    if world_size() == 1 or dist.get_rank() == 0:
        result = {
            "shape": a.shape,
            "tokens_per_rank": s["batch"] * seq,
            "processes": world_size(),
            "data_parallel": ctx.data_degree,
            "sharding": ctx.sharding_degree,
            "allreduce": "per_parameter" if a.per_parameter else "bucketed",
            "step_s": statistics.median(steps[1:]),
            "sync_s": statistics.median(syncs[1:]),
            "collectives_per_step": sync["collectives"],
            "ranks": ranks,
        }
        with open(a.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
