"""Bucketed data-parallel all-reduce at DP=2 (test worker): gradients of mixed sizes, a small bucket.

    python -m paddle.distributed.launch --nproc_per_node 2 dp_buckets.py OUT.json
Rank 0 writes the number of collectives, the bucket sizes and the largest error against the
float64 sum of both ranks' gradients."""

import json
import sys

import numpy as np
import paddle

from paddlebloom.runtime import init_parallel
from paddlebloom.training.optim import all_reduce_in_buckets, gradient_buckets

ctx = init_parallel(1)
shapes = [[300, 40], [7], [64, 64], [1000], [5, 5], [2000, 3]]  # 48 KB, 28 B, 16 KB, 4 KB, 100 B, 24 KB
params = [paddle.create_parameter(s, "float32") for s in shapes]
grads = [
    [np.random.RandomState(10 * rank + i).randn(*s).astype(np.float32) for i, s in enumerate(shapes)]
    for rank in range(2)
]
loss = sum((p * paddle.to_tensor(g)).sum() for p, g in zip(params, grads[ctx.dp_rank]))
loss.backward()
buckets = [[tuple(p.shape) for p in b] for b in gradient_buckets(params, 20_000)]
collectives = all_reduce_in_buckets(params, ctx.dp_group, bucket_bytes=20_000)
error = max(
    float(np.abs(p.grad.numpy() - (grads[0][i].astype(np.float64) + grads[1][i])).max()) for i, p in enumerate(params)
)
if ctx.dp_rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"collectives": collectives, "buckets": buckets, "max_error": error}, f)
