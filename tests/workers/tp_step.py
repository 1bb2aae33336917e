"""One forward/backward/AdamW step at whatever TP degree we are launched with (test worker).

Writes loss.json, the merged checkpoint after the step (merged/), and before the step the
per-rank shards (shards/) so the test can check the split/merge round trip.
"""

import argparse
import json
import os

import numpy as np
import paddle

from paddlebloom.checkpoint import load_into, save_checkpoint
from paddlebloom.config import BloomConfig
from paddlebloom.model import BloomForCausalLM
from paddlebloom.runtime import init_parallel, parallel_context, use_all_cores

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--out", required=True)
p.add_argument("--tp", type=int, default=1)
args = p.parse_args()
use_all_cores()
ctx = init_parallel(args.tp)
config = BloomConfig.load(args.model)
model = BloomForCausalLM(config, parallel=ctx)
load_into(model, args.model)
if args.tp > 1:
    save_checkpoint(model, os.path.join(args.out, "shards"), config, args.model, merge=False)
rng = np.random.RandomState(0)
ids = paddle.to_tensor(rng.randint(4, config.vocab_size, size=(3, 17)))
mask = paddle.to_tensor([[1] * 17, [0] * 5 + [1] * 12, [1] * 17])
labels = paddle.where(mask[:, 1:] > 0, ids[:, 1:], paddle.full_like(ids[:, 1:], -100))
opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(), weight_decay=0.01)
out = model(ids[:, :-1], attention_mask=mask[:, :-1], labels=labels)
out.loss.backward()
opt.step()
save_checkpoint(model, os.path.join(args.out, "merged"), config, args.model, merge=True)
if parallel_context().is_main:
    with open(os.path.join(args.out, "loss.json"), "w") as f:
        json.dump({"loss": float(out.loss), "tp": parallel_context().tp_degree}, f)
