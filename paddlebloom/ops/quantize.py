"""Weight-only int8 / bf16 conversion helpers and Python entry points to the C++ CPU operators.

Layout: every weight here is [N, K] = [out_features, in_features], one output channel's K weights
contiguous. That is the embedding table's own layout (the tied LM head needs no copy) and the
transpose of `paddle.nn.Linear.weight` ([in, out]); `WeightOnlyLinear.from_linear` transposes.

int8 is symmetric per output channel: scale[n] = max_k |w[n, k]| / 127, q = round(w / scale), so
w ~= q * scale with an error of at most scale / 2 per weight. Measured on normal(0, 0.02) weights
this keeps a Linear's output within ~0.8% (relative RMS) of fp32; bf16 within ~0.2%.
"""

from typing import Optional, Tuple

import numpy as np
import paddle
from paddle.jit.marker import unified

from . import load

__all__ = [
    "quantize_int8",
    "dequantize_int8",
    "bf16_bits",
    "to_bf16",
    "from_bf16",
    "linear_int8",
    "linear_bf16",
    "linear_fp32",
    "embedding_int8",
    "embedding_bf16",
    "WeightOnlyLinear",
]


def _numpy(w) -> np.ndarray:
    if isinstance(w, paddle.Tensor):
        w = w.astype("float32").numpy() if w.dtype == paddle.bfloat16 else w.numpy()
    return np.asarray(w)


def quantize_int8(w) -> Tuple[np.ndarray, np.ndarray]:
    """[N, K] float weights -> (int8 [N, K], float32 scale [N]), symmetric per row.

    An all-zero row gets scale 1.0 (any positive value reproduces zeros; 0 would divide by 0).
    The division is done in float64 so that the row maximum lands exactly on +-127.
    """
    w = _numpy(w).astype(np.float64)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8 expects a 2-D [N, K] weight, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("quantize_int8: weight has NaN or infinite values")
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q, scale) -> np.ndarray:
    """The float32 weights an int8 weight stands for (reference / tests; the ops never do this)."""
    return _numpy(q).astype(np.float32) * _numpy(scale).astype(np.float32)[:, None]


def bf16_bits(w) -> np.ndarray:
    """float32 -> the bfloat16 bit patterns (uint16), rounding to nearest, ties to even."""
    u = np.ascontiguousarray(_numpy(w), dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(u.view(np.float32)), np.uint16(0x7FC0), rounded)  # NaN stays NaN


def to_bf16(w) -> paddle.Tensor:
    """float32 array/tensor -> a paddle bfloat16 tensor (Paddle maps numpy uint16 to bfloat16)."""
    t = paddle.to_tensor(bf16_bits(w))
    assert t.dtype == paddle.bfloat16, t.dtype
    return t


def from_bf16(w) -> np.ndarray:
    """bfloat16 tensor or uint16 bits -> float32 numpy (exact)."""
    if isinstance(w, paddle.Tensor):
        return w.astype("float32").numpy()
    return (np.asarray(w, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


@unified  # traced as is by to_static: it only appends the custom op
def linear_int8(
    x: paddle.Tensor, weight: paddle.Tensor, scale: paddle.Tensor, bias: Optional[paddle.Tensor] = None
) -> paddle.Tensor:
    """x [..., K] float32 @ (weight int8 [N, K] * scale [N]).T + bias [N] -> float32 [..., N]."""
    return load().weight_only_linear_int8(x, weight, scale, bias)


@unified
def linear_bf16(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """x [..., K] float32 @ weight bf16 [N, K].T + bias [N] -> float32 [..., N] (fp32 math)."""
    return load().weight_only_linear_bf16(x, weight, bias)


@unified
def linear_fp32(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """x [..., K] float32 @ weight float32 [N, K].T + bias [N] (the tied LM head: the embedding table as it is)."""
    return load().weight_only_linear_fp32(x, weight, bias)


@unified
def embedding_int8(ids: paddle.Tensor, weight: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
    """Rows of an int8 table [V, H] (times scale [V]) for ids [...] -> float32 [..., H]."""
    return load().embedding_int8(ids, weight, scale)


@unified
def embedding_bf16(ids: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """Rows of a bf16 table [V, H] for ids [...] -> float32 [..., H]."""
    return load().embedding_bf16(ids, weight)


class WeightOnlyLinear(paddle.nn.Layer):
    """A Linear whose weight is stored int8 (+ per-channel scale) or bf16, computed in fp32.

    The weights are persistable buffers, so `paddle.jit.save` writes them (int8 / bf16) into
    .pdiparams and the saved program calls the custom op.
    """

    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray] = None, dtype: str = "int8"):
        super().__init__()
        if dtype not in ("int8", "bfloat16"):
            raise ValueError(f"dtype must be 'int8' or 'bfloat16', got {dtype!r}")
        self.dtype_name = dtype
        weight = _numpy(weight).astype(np.float32)
        if dtype == "int8":
            q, scale = quantize_int8(weight)
            self.register_buffer("weight", paddle.to_tensor(q), persistable=True)
            self.register_buffer("scale", paddle.to_tensor(scale), persistable=True)
        else:
            self.register_buffer("weight", to_bf16(weight), persistable=True)
            self.scale = None
        if bias is not None:
            self.register_buffer("bias", paddle.to_tensor(_numpy(bias).astype(np.float32)), persistable=True)
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: paddle.nn.Linear, dtype: str = "int8") -> "WeightOnlyLinear":
        """From a paddle.nn.Linear (weight [in, out]) or anything with the same attributes."""
        bias = None if getattr(linear, "bias", None) is None else linear.bias
        return cls(_numpy(linear.weight).T, bias, dtype)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.dtype_name == "int8":
            return linear_int8(x, self.weight, self.scale, self.bias)
        return linear_bf16(x, self.weight, self.bias)
