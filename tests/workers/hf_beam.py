"""Runs in .venv-hf: Hugging Face's beam search on a converted checkpoint, the reference for ours.

    python hf_beam.py HF_DIR \\
        '{"prompts": [[ids]], "eos": N, "num_beams": 3, "length_penalties": [1.0], "max_new_tokens": 10}'
Prints one JSON line: per length penalty, the new tokens of each prompt's best beam, EOS and padding removed."""

import json
import sys

import torch
from transformers import BloomForCausalLM

hf_dir, spec = sys.argv[1], json.loads(sys.argv[2])
model = BloomForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
eos = spec["eos"]
results = {}
with torch.no_grad():
    for penalty in spec["length_penalties"]:
        results[str(penalty)] = []
        for prompt in spec["prompts"]:  # one at a time: no padding in the reference
            out = model.generate(
                torch.tensor([prompt]),
                num_beams=spec["num_beams"],
                length_penalty=penalty,
                do_sample=False,
                max_new_tokens=spec["max_new_tokens"],
                eos_token_id=eos,
                pad_token_id=eos,
                early_stopping=False,
            )
            new = out[0, len(prompt) :].tolist()
            results[str(penalty)].append(new[: new.index(eos)] if eos in new else new)
print(json.dumps(results))
