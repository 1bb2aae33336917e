"""What both benchmark sides share: shapes, FLOP arithmetic, arguments, peak memory.

No framework imports here: the peer's worker runs in another venv (.venv-hf)."""

import argparse

SHAPES = {
    # name: (hidden, layers, heads, vocab, batch, seq)
    "a": dict(hidden=512, layers=8, heads=8, vocab=32000, batch=4, seq=256),
    "b": dict(hidden=1024, layers=24, heads=16, vocab=250880, batch=1, seq=512),  # bloom-560m
}


def params(shape: dict) -> int:
    h, layers, v = shape["hidden"], shape["layers"], shape["vocab"]
    return v * h + layers * (12 * h * h + 13 * h) + 4 * h  # tied LM head; LayerNorms and biases


def train_flops_per_token(shape: dict, method: str) -> float:
    """Matmul FLOPs of one training token: 6N (forward 2N, backward 4N) plus attention scores;
    LoRA skips the frozen weights' gradients (backward ~2N)."""
    n = params(shape)  # the embedding is a lookup, but the tied LM head multiplies by the same V x H matrix
    attention = 2 * 2 * shape["layers"] * shape["seq"] * shape["hidden"]  # QK^T and PV per token, forward
    factor = 6 if method == "full" else 4
    return factor * n + 3 * attention


def worker_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--method", choices=("full", "lora"), required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--recompute", action="store_true")
    return p.parse_args()


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: its own, not inherited from a forking parent)."""
    with open("/proc/self/status") as f:
        return int([line.split()[1] for line in f if line.startswith("VmHWM")][0]) / 1024
