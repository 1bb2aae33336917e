"""Runs in .venv-hf: build a random Hugging Face BLOOM, save it (sharded safetensors), and
write its logits on a left-padded batch — the independent reference for convert_hf."""

import json
import shutil
import sys

import numpy as np
import torch
from transformers import BloomConfig, BloomForCausalLM

out_dir, tokenizer_dir, ref_file = sys.argv[1:4]
torch.manual_seed(0)
config = BloomConfig(vocab_size=2000, hidden_size=64, n_layer=2, n_head=4, layer_norm_epsilon=1e-5)
model = BloomForCausalLM(config).eval()
with torch.no_grad():  # HF's init leaves LayerNorms at 1/0: perturb everything so no weight is trivial
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)
model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="200KB")
for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
    shutil.copy(f"{tokenizer_dir}/{name}", f"{out_dir}/{name}")
ids = np.array([[3, 3, 3, 17, 250, 31, 99, 1000], [5, 6, 7, 8, 9, 10, 11, 12]])
mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
np.savez(ref_file, ids=ids, mask=mask, logits=logits)
print(json.dumps({"files": sorted(__import__("os").listdir(out_dir))}))
