"""Sampling at the launched TP degree (test worker): unseeded, every rank must draw the same
tokens; seeded, the tokens must equal a single process's. Rank 0 writes OUT as JSON."""

import json
import sys

import paddle
import paddle.distributed as dist

from paddlebloom.generation import GenerationConfig, generate_ids
from paddlebloom.loading import load_model
from paddlebloom.runtime import init_parallel, parallel_context, quiet, use_all_cores, world_size

model_dir, out_file = sys.argv[1:3]
quiet()
use_all_cores()
init_parallel(world_size())
model, tok, _ = load_model(model_dir)
prompts = [tok.encode("Alice has a red"), tok.encode("The cat is")]
config = GenerationConfig(max_new_tokens=8, decode_strategy="sampling", top_k=50, temperature=1.5)
unseeded = generate_ids(model, prompts, config)
flat = paddle.to_tensor([t for row in unseeded for t in row + [-1] * (config.max_new_tokens - len(row))], dtype="int64")
every_rank = []
dist.all_gather(every_rank, flat, group=parallel_context().tp_group)
config.seed = 11
seeded = generate_ids(model, prompts, config)
if parallel_context().is_main:
    with open(out_file, "w") as f:
        json.dump(
            {"ranks_agree": all(r.numpy().tolist() == flat.numpy().tolist() for r in every_rank), "seeded": seeded}, f
        )
