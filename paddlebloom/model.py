"""BLOOM in one file: ALiBi attention, tanh-GELU MLP, tied embeddings, tensor-parallel aware.

Parameter names are PaddleNLP's `BloomForCausalLM` names (`bloom.h.0.self_attention.query_key_value.weight`
...), so checkpoints move both ways. We own the model instead of patching PaddleNLP's because
its init zeroes every Linear weight, its TP path has no CPU kernels and its prefix/mask handling
breaks under TP and export (the README's "Upstream defects" table; the workarounds the model
still needs are functions in workarounds.py).

Conventions:
- `labels` are already shifted: labels[t] is the token that should follow input_ids[t]
  (the data pipeline shifts; -100 = not scored). Same as PaddleNLP's BLOOM, which does not shift either.
- `attention_mask` [batch, past + seq] is 1 for real tokens, 0 for padding (left padding).
- `past_key_values`: per layer (key, value), each [batch, local_heads, past_len, head_dim].
- The model is built for an explicit ParallelContext (`BloomForCausalLM(config, parallel=ctx)`,
  ctx from runtime.init_parallel); without one it is a single-process model, refused where
  init_parallel set up several ranks (it would silently get TP=1 shapes).
"""

import math
from typing import List, NamedTuple, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .config import BloomConfig
from .parallel.collectives import gather_from_tp
from .parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, parallel_cross_entropy
from .runtime import ParallelContext, single_process_context
from .workarounds import recomputed_block

KV = Tuple[paddle.Tensor, paddle.Tensor]


class CausalLMOutput(NamedTuple):
    loss: Optional[paddle.Tensor]
    logits: Optional[paddle.Tensor]
    past_key_values: Optional[List[KV]]
    n_tokens: Optional[paddle.Tensor] = None


def alibi_slopes(n_head: int) -> List[float]:
    """The per-head ALiBi slopes of BLOOM (geometric; interleaved extras when n_head is not a power of 2)."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base**p for p in range(1, closest + 1)]
    if closest != n_head:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra**p for p in range(1, 1 + 2 * min(closest, n_head - closest), 2)]
    return slopes


def attention_bias(attention_mask, query_len: int, slopes, dtype):
    """ALiBi plus causal and padding masks: [batch, heads, query_len, key_len].

    Key positions count only real tokens (cumsum of the mask), so a left-padded prompt gets the
    same biases as the same prompt alone.
    """
    mask = attention_mask.astype("float32")
    key_len = mask.shape[-1]
    positions = (mask.cumsum(axis=-1) - 1.0) * mask  # [b, k]
    alibi = slopes.reshape([1, -1, 1, 1]) * positions[:, None, None, :]
    past = key_len - query_len
    q_idx = paddle.arange(query_len, dtype="int64").unsqueeze(-1) + past
    k_idx = paddle.arange(key_len, dtype="int64").unsqueeze(0)
    allowed = (k_idx <= q_idx).unsqueeze(0).unsqueeze(0) & (mask > 0.5)[:, None, None, :]
    blocked = paddle.full([], -1e9, dtype="float32")
    return paddle.where(allowed, alibi, alibi + blocked).astype(dtype)


class BloomAttention(nn.Layer):
    def __init__(self, config: BloomConfig, parallel: ParallelContext):
        super().__init__()
        self.local_heads = config.n_head // parallel.tp_degree
        self.head_dim = config.head_dim
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size, 3 * config.hidden_size, parallel, config.initializer_range
        )
        self.dense = RowParallelLinear(config.hidden_size, config.hidden_size, parallel, config.initializer_range)
        self.attention_dropout = nn.Dropout(config.attention_dropout)

    def forward(self, x, bias, layer_past: Optional[KV] = None):
        b, s, _ = x.shape
        # BLOOM's fused layout is [heads, 3, head_dim] per position, so a column shard holds whole heads.
        # One transpose to [3, b, heads, s, head_dim] and a split: the backward is one transpose and
        # one concat, where three strided slices cost a zero-filled copy each (forward + backward of
        # the attention of shape (a) on CPU: 100 -> 70 ms per layer with Paddle's strided views,
        # 19 -> 18 ms with workarounds.contiguous_cpu_kernels).
        qkv = self.query_key_value(x).reshape([b, s, self.local_heads, 3, self.head_dim]).transpose([3, 0, 2, 1, 4])
        q, k, v = (t.squeeze(0) for t in paddle.split(qkv, 3, axis=0))
        if layer_past is not None:
            k = paddle.concat([layer_past[0], k], axis=2)
            v = paddle.concat([layer_past[1], v], axis=2)
        scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim)) + bias
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(q.dtype)
        out = paddle.matmul(self.attention_dropout(probs), v)
        out = out.transpose([0, 2, 1, 3]).reshape([b, s, self.local_heads * self.head_dim])
        return self.dense(out), (k, v)


class BloomMLP(nn.Layer):
    def __init__(self, config: BloomConfig, parallel: ParallelContext):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, 4 * config.hidden_size, parallel, config.initializer_range
        )
        self.dense_4h_to_h = RowParallelLinear(
            4 * config.hidden_size, config.hidden_size, parallel, config.initializer_range
        )

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=True))


class BloomBlock(nn.Layer):
    def __init__(self, config: BloomConfig, parallel: ParallelContext):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.input_layernorm = nn.LayerNorm(config.hidden_size, epsilon=eps)
        self.self_attention = BloomAttention(config, parallel)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, epsilon=eps)
        self.mlp = BloomMLP(config, parallel)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.post_ln_residual = config.apply_residual_connection_post_layernorm

    def forward(self, x, bias, layer_past: Optional[KV] = None):
        h = self.input_layernorm(x)
        attn, present = self.self_attention(h, bias, layer_past)
        x = (h if self.post_ln_residual else x) + self.dropout(attn)
        h = self.post_attention_layernorm(x)
        x = (h if self.post_ln_residual else x) + self.dropout(self.mlp(h))
        return x, present


class BloomModel(nn.Layer):
    def __init__(self, config: BloomConfig, parallel: ParallelContext):
        super().__init__()
        config.validate_tensor_parallel(parallel.tp_degree)
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, parallel, config.initializer_range
        )
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)
        self.h = nn.LayerList([BloomBlock(config, parallel) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)
        heads = config.n_head // parallel.tp_degree
        local = alibi_slopes(config.n_head)[parallel.tp_rank * heads : (parallel.tp_rank + 1) * heads]
        self.register_buffer("alibi_slopes", paddle.to_tensor(local, dtype="float32"), persistable=False)
        self.recompute = False

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        b, s = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if attention_mask is None:
            attention_mask = paddle.ones([b, past_len + s], dtype="int64")
        x = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        bias = attention_bias(attention_mask, s, self.alibi_slopes, x.dtype)
        presents = []
        for i, block in enumerate(self.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            if self.recompute and self.training and not use_cache:
                x, present = recomputed_block(block, x, bias, layer_past), None
            else:
                x, present = block(x, bias, layer_past)
            presents.append(present)
        return self.ln_f(x), (presents if use_cache else None)


class BloomForCausalLM(nn.Layer):
    def __init__(self, config: BloomConfig, parallel: Optional[ParallelContext] = None):
        super().__init__()
        self.config = config
        self.parallel = parallel or single_process_context()
        self.bloom = BloomModel(config, self.parallel)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        past_key_values=None,
        use_cache: bool = False,
        label_smoothing: float = 0.0,
        last_logits_only: bool = False,
        return_logits: bool = True,
    ) -> CausalLMOutput:
        hidden, presents = self.bloom(input_ids, attention_mask, past_key_values, use_cache)
        if last_logits_only:
            hidden = hidden[:, -1:]
        emb = self.bloom.word_embeddings
        local_logits = emb.logits(hidden)
        loss = n_tokens = None
        if labels is not None:
            loss, n_tokens = parallel_cross_entropy(
                local_logits, labels, emb.start, emb.vocab_size, label_smoothing, parallel=self.parallel
            )
        logits = gather_from_tp(local_logits, self.parallel) if return_logits else None
        return CausalLMOutput(loss, logits, presents, n_tokens)

    def set_recompute(self, enabled: bool) -> None:
        self.bloom.recompute = bool(enabled)

    def nonzero_report(self) -> dict:
        """Fraction of non-zero entries per Linear weight: tests use it to refuse all-zero models."""
        return {
            name: float((p != 0).astype("float32").mean())
            for name, p in self.named_parameters()
            if name.endswith(".weight") and len(p.shape) == 2
        }
