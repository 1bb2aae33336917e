"""An independent BLOOM forward in plain numpy (float64), straight from the architecture:

  h0 = LayerNorm(E[ids]);  per layer:  a = Attn(LN1(h)) ;  h = h + a ;  h = h + MLP(LN2(h))
  Attn: fused qkv laid out [heads, 3, head_dim] per position, softmax(q k^T / sqrt(d) + ALiBi)
        with ALiBi = slope_head * key_position and a causal mask; MLP: gelu_tanh, 4x wide.
  logits = LN_f(h) E^T  (tied embeddings).

Reads the checkpoint's arrays (PaddleNLP names, Linear weights [in, out]); no Paddle model code,
so the evaluator's numbers can be checked against something that does not share its bugs.
"""

import math
from typing import Dict, List, Sequence

import numpy as np


def slopes(n_head: int) -> List[float]:
    # Press et al.: for a power of two n the slopes are r, r^2, ..., r^n with r = 2^(-8/n);
    # otherwise the nearest lower power of two's slopes, then every other slope of twice that.
    def power_of_two(n):
        r = 2.0 ** (-8.0 / n)
        return [r ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    low = 2 ** int(math.floor(math.log2(n_head)))
    return power_of_two(low) + power_of_two(2 * low)[0::2][: n_head - low]


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class NumpyBloom:
    def __init__(self, state: Dict[str, np.ndarray], n_head: int, eps: float = 1e-5):
        self.p = {k: v.astype(np.float64) for k, v in state.items()}
        self.n_head, self.eps = n_head, eps
        self.n_layer = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("bloom.h."))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[len(ids), vocab] logits of one unpadded sequence."""
        p, eps = self.p, self.eps
        E = p["bloom.word_embeddings.weight"]
        h = _ln(
            E[np.asarray(ids)],
            p["bloom.word_embeddings_layernorm.weight"],
            p["bloom.word_embeddings_layernorm.bias"],
            eps,
        )
        s, hidden = h.shape
        d = hidden // self.n_head
        alibi = np.asarray(slopes(self.n_head))[:, None, None] * np.arange(s)[None, None, :]  # [heads, 1, keys]
        causal = np.triu(np.ones((s, s), dtype=bool), k=1)
        for i in range(self.n_layer):
            pre = f"bloom.h.{i}."
            x = _ln(h, p[pre + "input_layernorm.weight"], p[pre + "input_layernorm.bias"], eps)
            qkv = (
                x @ p[pre + "self_attention.query_key_value.weight"] + p[pre + "self_attention.query_key_value.bias"]
            ).reshape(s, self.n_head, 3, d)
            q, k, v = (qkv[:, :, j, :].transpose(1, 0, 2) for j in range(3))  # [heads, s, d]
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d) + alibi
            scores = np.where(causal[None], -np.inf, scores)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(1, 0, 2).reshape(s, hidden)
            h = h + ctx @ p[pre + "self_attention.dense.weight"] + p[pre + "self_attention.dense.bias"]
            x = _ln(h, p[pre + "post_attention_layernorm.weight"], p[pre + "post_attention_layernorm.bias"], eps)
            up = _gelu(x @ p[pre + "mlp.dense_h_to_4h.weight"] + p[pre + "mlp.dense_h_to_4h.bias"])
            h = h + up @ p[pre + "mlp.dense_4h_to_h.weight"] + p[pre + "mlp.dense_4h_to_h.bias"]
        h = _ln(h, p["bloom.ln_f.weight"], p["bloom.ln_f.bias"], eps)
        return h @ E.T

    def log_probs(self, ids: Sequence[int]) -> np.ndarray:
        z = self.logits(ids)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
