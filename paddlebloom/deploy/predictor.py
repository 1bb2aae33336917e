"""Run an exported step program with `paddle.inference`: no dygraph model, no PaddleNLP at run time.

The program is one step of the model over a persistent KV cache (export/exporter.py); the
engine (paddlebloom.engine) owns the cache and decides what each call computes. Imports stay
light on purpose: deployment needs the program, its tokenizer and our C++ ops, not the training code.
"""

import json
import os
from dataclasses import replace
from typing import List, Optional, Sequence

import numpy as np
from paddle import inference

from .. import ops
from ..engine import GenerationConfig, StepEngine
from ..engine.backends import STEP_INPUTS, InferenceBackend, read_export_info
from ..workarounds import find_model, onednn_only_when_asked

PRECISIONS = ("fp32", "bf16", "int8")
Sampling = (
    GenerationConfig  # the name scripts and tests written against the deploy API use; the package says GenerationConfig
)


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_config(
    program: str,
    params: str,
    device: str = "cpu",
    cpu_threads: int = 0,
    enable_mkldnn: bool = False,
    precision: str = "fp32",
    weights: str = "float32",
) -> inference.Config:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and weights != "weight_only_int8":
        # Weight-only int8 is a property of the exported weights, not a run-time switch.
        raise ValueError(
            f"--precision int8: {program} holds {weights} weights; export with --quant_type weight_only_int8"
        )
    if precision == "bf16" and weights != "float32":
        raise ValueError(
            f"--precision bf16: converts a float32 program with oneDNN; {program} already holds {weights} weights"
        )
    config = inference.Config(program, params)
    config.disable_glog_info()  # the optimiser's pass log would bury the per-batch numbers
    if device != "cpu":
        # The step program's attention-over-cache kernel is ours and CPU-only; GPU serving of BLOOM is
        # PaddleNLP's block-attention predictor (llm/predict), which this suite's checkpoints load into.
        raise ValueError(
            f"--device {device}: the exported step program runs on CPU (its cache-attention kernel is CPU-only); on "
            "GPUs use PaddleNLP's llm predictor with this checkpoint"
        )
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(cpu_threads if cpu_threads > 0 else (os.cpu_count() or 1))
    if precision == "bf16":
        if not enable_mkldnn:
            raise ValueError("--precision bf16: needs --enable_mkldnn (the bf16 kernels are oneDNN's)")
        if not _cpu_has_bf16():
            raise ValueError("--precision bf16: this CPU has no avx512_bf16/amx_bf16")
    onednn_only_when_asked(config, enable_mkldnn)
    if precision == "bf16":
        config.enable_mkldnn_bfloat16()
    return config


class GenerationPredictor:
    """Generates from token-id prompts with the exported step program: up to `max_batch_size`
    prompts decode together, and a finished one's cache slot goes to the next prompt."""

    @classmethod
    def from_flags(cls, args, max_batch_size: int) -> "GenerationPredictor":
        """From the deploy and serve scripts' shared flags (model, device, threads, oneDNN, precision)."""
        return cls(
            args.model_dir,
            args.model_prefix,
            max_batch_size=max_batch_size,
            device=args.device,
            cpu_threads=args.cpu_threads,
            enable_mkldnn=args.enable_mkldnn,
            precision=args.precision,
        )

    def __init__(self, model_dir: str, model_prefix: str = "bloom", max_batch_size: int = 8, **config_kw):
        program, params = find_model(model_dir, model_prefix)
        info = read_export_info(model_dir)
        if info.get("program") != "step":
            raise ValueError(
                f"{program}: not a step program (exported by an older version of this suite); re-export it with "
                "export/export_generation_model.py"
            )
        threads = config_kw.get("cpu_threads") or os.cpu_count() or 1
        ops.set_num_threads(threads)
        ops.register_for_inference()  # the program's custom kernels, before the predictor parses it
        predictor = inference.create_predictor(
            make_config(program, params, weights=info.get("weights", "float32"), **config_kw)
        )
        names = predictor.get_input_names()
        if sorted(names) != sorted(STEP_INPUTS):
            raise ValueError(
                f"{program}: inputs {names} are not those of a step program ({list(STEP_INPUTS)}); re-export it"
            )
        prefix_path = os.path.join(model_dir, "prefix_kv.npy")
        prefix_kv = np.load(prefix_path) if os.path.isfile(prefix_path) else None
        self.engine = StepEngine(
            InferenceBackend(predictor, info), slots=max_batch_size, max_len=256, prefix_kv=prefix_kv
        )
        self.info = info
        with open(os.path.join(model_dir, "generation_config.json"), encoding="utf-8") as f:
            self.generation_config = json.load(f)
        self.eos_token_id = int(self.generation_config["eos_token_id"])
        self.pad_token_id = int(self.generation_config["pad_token_id"])

    def settings(self, sampling: GenerationConfig) -> GenerationConfig:
        """The request's settings with this model's EOS and pad ids."""
        return replace(sampling, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: GenerationConfig, seeds: Optional[Sequence[int]] = None
    ) -> List[List[int]]:
        """New token ids of each prompt, EOS excluded."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: nothing to generate from")
        return self.engine.generate(prompts, self.settings(sampling), seeds)
