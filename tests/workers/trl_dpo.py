"""Runs in .venv-hf: TRL's DPOTrainer loss, metrics and policy gradients on one batch — the
independent reference for paddlebloom.dpo.

argv: policy HF dir, reference HF dir, pairs.json ([{"prompt", "chosen", "rejected"}] as text: TRL
tokenises them itself), a JSON list of settings (beta, loss_type, label_smoothing), an output
prefix (PREFIX.N.npz per setting). Both models in float64; gradients come back under our names
(Linear weights [in, out]).
"""

import json
import sys
import tempfile

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, BloomForCausalLM
from trl import DPOConfig, DPOTrainer

policy_dir, ref_dir, pairs_file, settings_list, out_prefix = sys.argv[1:6]
tokenizer = AutoTokenizer.from_pretrained(policy_dir)
with open(pairs_file, encoding="utf-8") as f:
    pairs = json.load(f)
linears = ("query_key_value.weight", "dense.weight", "dense_h_to_4h.weight", "dense_4h_to_h.weight")
for n, settings in enumerate(json.loads(settings_list)):
    policy = BloomForCausalLM.from_pretrained(policy_dir, torch_dtype=torch.float64)
    reference = BloomForCausalLM.from_pretrained(ref_dir, torch_dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp,
            report_to="none",
            use_cpu=True,
            beta=settings["beta"],
            loss_type=settings["loss_type"],
            label_smoothing=settings["label_smoothing"],
            max_length=None,
            max_prompt_length=None,
            max_completion_length=None,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=config,
            train_dataset=Dataset.from_list(pairs),
            processing_class=tokenizer,
        )
        batch = trainer.data_collator(
            [trainer.train_dataset[i] for i in range(len(pairs))]
        )  # the pairs in order, one batch
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
        loss.backward()
    grads = {}
    for name, p in policy.named_parameters():
        ours = "bloom." + name[len("transformer.") :]
        g = p.grad.numpy()
        grads["grad:" + ours] = g.T if ours.endswith(linears) else g
    tokens = {
        "tokens:" + key: batch[key].numpy() for key in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    }
    np.savez(f"{out_prefix}.{n}.npz", loss=float(loss), metrics=json.dumps(metrics), **grads, **tokens)
    print(json.dumps({"loss": float(loss), **metrics}))
