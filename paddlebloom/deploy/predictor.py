"""Run an exported generation program with `paddle.inference`: no dygraph model, no PaddleNLP at run time.

Imports stay light on purpose (tokenizer, JSON, paddle.inference): deployment must not need the
training code or the model class.
"""
import json
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from paddle import inference

from ..export.program import GREEDY, INPUTS, SAMPLING

STRATEGIES = {"greedy_search": GREEDY, "sampling": SAMPLING}
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass
class Sampling:
    decode_strategy: str = "greedy_search"
    max_new_tokens: int = 64
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.decode_strategy not in STRATEGIES:
            raise ValueError(f"--decode_strategy {self.decode_strategy}: choose from {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens {self.max_new_tokens}: must be >= 1")
        if self.top_k < 0:
            raise ValueError(f"--top_k {self.top_k}: must be >= 0 (0 = no top-k)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top_p {self.top_p}: must be in (0, 1]")
        if self.temperature <= 0.0:
            raise ValueError(f"--temperature {self.temperature}: must be > 0 (use --decode_strategy greedy_search for argmax)")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"--repetition_penalty {self.repetition_penalty}: must be > 0")


def find_model(model_dir: str, model_prefix: str):
    """(program, params): Paddle 3 PIR `NAME.json` or legacy `NAME.pdmodel` (STACK.md defect 7)."""
    params = os.path.join(model_dir, model_prefix + ".pdiparams")
    for ext in (".json", ".pdmodel"):
        program = os.path.join(model_dir, model_prefix + ext)
        if os.path.isfile(program):
            if not os.path.isfile(params):
                raise FileNotFoundError(f"{program}: found, but its parameters {params} are missing")
            return program, params
    raise FileNotFoundError(f"{model_dir}: no exported model {model_prefix}.json or {model_prefix}.pdmodel (export with export/export_generation_model.py)")


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_config(program: str, params: str, device: str = "cpu", cpu_threads: int = 0, enable_mkldnn: bool = False, precision: str = "fp32", weights_dtype: str = "float32") -> inference.Config:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    if weights_dtype == "bfloat16" and device == "cpu" and not (enable_mkldnn and _cpu_has_bf16()):
        # Paddle's plain CPU kernels have no bf16 matmul: the run would die with a bare std::exception.
        raise ValueError(f"{program}: exported with --dtype bfloat16, which runs on CPU only with --enable_mkldnn on a CPU with avx512_bf16/amx_bf16 (re-export with --dtype float32)")
    if precision == "int8":
        # Weight-only int8 needs a model quantised at export time; this program holds float weights.
        raise ValueError("--precision int8: unsupported for this export (weight-only int8 quantisation is not implemented yet)")
    config = inference.Config(program, params)
    config.disable_glog_info()  # the optimiser's pass log would bury the per-batch numbers
    if device == "gpu":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise ValueError("--device gpu: this Paddle build has no CUDA (install Paddle's GPU wheel)")
        if precision == "bf16":
            raise ValueError("--precision bf16: supported on CPU (oneDNN) only")
        config.enable_use_gpu(256, 0)
        return config
    if device != "cpu":
        raise ValueError(f"--device {device}: choose cpu or gpu")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(cpu_threads if cpu_threads > 0 else (os.cpu_count() or 1))
    if precision == "bf16":
        if not enable_mkldnn:
            raise ValueError("--precision bf16: needs --enable_mkldnn (the bf16 kernels are oneDNN's)")
        if not _cpu_has_bf16():
            raise ValueError("--precision bf16: this CPU has no avx512_bf16/amx_bf16")
    if enable_mkldnn:
        config.enable_mkldnn()
        if precision == "bf16":
            config.enable_mkldnn_bfloat16()
    else:
        config.disable_mkldnn()  # Paddle 3 turns oneDNN on by default; the flag must mean what it says
    return config


class GenerationPredictor:
    """Left-pads a batch of token-id prompts, runs the program, returns the new ids before EOS."""

    def __init__(self, model_dir: str, model_prefix: str = "bloom", **config_kw):
        program, params = find_model(model_dir, model_prefix)
        info_path = os.path.join(model_dir, "export_info.json")
        info = {}
        if os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        self.predictor = inference.create_predictor(make_config(program, params, weights_dtype=info.get("dtype", "float32"), **config_kw))
        names = self.predictor.get_input_names()
        expected = [n for n, _, _ in INPUTS]
        if sorted(names) != sorted(expected):
            raise ValueError(f"{program}: inputs {names} are not those of a generation program ({expected}); re-export it")
        with open(os.path.join(model_dir, "generation_config.json"), encoding="utf-8") as f:
            self.generation_config = json.load(f)
        self.eos_token_id = int(self.generation_config["eos_token_id"])
        self.pad_token_id = int(self.generation_config["pad_token_id"])

    def pad(self, prompts: Sequence[Sequence[int]]):
        width = max(len(p) for p in prompts)
        ids = np.full([len(prompts), width], self.pad_token_id, dtype="int64")
        mask = np.zeros([len(prompts), width], dtype="int64")
        for row, prompt in enumerate(prompts):
            if len(prompt):
                ids[row, width - len(prompt):] = prompt
                mask[row, width - len(prompt):] = 1
        return ids, mask

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> List[List[int]]:
        sampling.validate()
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: nothing to generate from")
        ids, mask = self.pad(prompts)
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "max_new_tokens": np.array([sampling.max_new_tokens], dtype="int64"),
            "strategy": np.array([STRATEGIES[sampling.decode_strategy]], dtype="int64"),
            "top_k": np.array([sampling.top_k], dtype="int64"),
            "top_p": np.array([sampling.top_p], dtype="float32"),
            "temperature": np.array([sampling.temperature], dtype="float32"),
            "repetition_penalty": np.array([sampling.repetition_penalty], dtype="float32"),
            "eos_token_id": np.array([self.eos_token_id], dtype="int64"),
            "pad_token_id": np.array([self.pad_token_id], dtype="int64"),
            "seed": np.array([sampling.seed], dtype="int64"),
        }
        for name, value in feed.items():
            self.predictor.get_input_handle(name).copy_from_cpu(value)
        self.predictor.run()
        out = self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu()
        return [cut_at_eos(row.tolist(), self.eos_token_id) for row in out]


def cut_at_eos(ids: List[int], eos: int) -> List[int]:
    """Tokens before the first EOS (the program pads after it); as paddlebloom.generation returns them."""
    return ids[: ids.index(eos)] if eos in ids else ids
