"""BLOOM as one step of the step-wise engine: new tokens in, logits of picked positions out, cache updated in place.

`StepModel.forward(input_ids, cache, slots, past, lens, picks)` runs any number of new tokens per row
(a prompt's prefill or one decode token) against a preallocated KV cache that the engine owns:
row r's `lens[r]` tokens (right-padded to the batch's width) continue slot `slots[r]`, which
already holds `past[r]` tokens. The custom `cache_attention` op writes their keys/values into the
slot and attends over the filled part only (paddlebloom/ops/csrc/cache_attention.cc), so the same
Layer is the eager decoder (predict, chat) and, traced once, the exported program that
paddle.inference runs (deploy, serving).

It is built from a loaded `BloomForCausalLM` (LoRA already merged) and keeps its parameter
names, so the export's parameters are the checkpoint's. Linear layers and the tied embedding come
in three storage kinds (`--quant_type`/`--dtype` of the export):
  float32            F.linear / the embedding as trained;
  bfloat16           bf16 weights, fp32 arithmetic (our op: half the bytes read per token);
  weight_only_int8   int8 weights with one fp32 scale per output channel (our op; the tied LM
                     head and the embedding lookup read the same int8 table).
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..ops import load as load_ops
from ..ops.quantize import embedding_bf16, embedding_int8, linear_bf16, linear_fp32, linear_int8, quantize_int8, to_bf16
from ..parallel.collectives import gather_from_tp

WEIGHT_KINDS = ("float32", "bfloat16", "weight_only_int8")


def _frozen(layer: nn.Layer, name: str, value) -> paddle.Tensor:
    """A persistable buffer (saved with the program like a parameter; int8 has no initializer kernel)."""
    tensor = value.detach() if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
    layer.register_buffer(name, tensor, persistable=True)
    return tensor


def _store(layer: nn.Layer, weight_nk, kind: str) -> None:
    """weight [out, in] (one output's weights contiguous) as bf16, or int8 + one scale per output."""
    if kind == "bfloat16":
        _frozen(layer, "weight", to_bf16(weight_nk))
    else:
        q, scale = quantize_int8(weight_nk)
        _frozen(layer, "weight", q)
        _frozen(layer, "weight_scale", scale)


def _matmul(layer: nn.Layer, x, bias):
    """x @ layer's stored weight.T + bias, in fp32, reading the stored bytes directly."""
    if layer.kind == "bfloat16":
        return linear_bf16(x, layer.weight, bias)
    return linear_int8(x, layer.weight, layer.weight_scale, bias)


class StepLinear(nn.Layer):
    """A checkpoint Linear ([in, out] weight) stored as bf16 or int8."""

    def __init__(self, weight, bias, kind: str):
        super().__init__()
        self.kind = kind
        _store(self, weight.t(), kind)
        _frozen(self, "bias", bias)

    def forward(self, x):
        return _matmul(self, x, self.bias)


class TiedEmbedding(nn.Layer):
    """The word embedding [vocab, hidden], also the LM head (BLOOM ties them), stored as bf16 or int8."""

    def __init__(self, weight, kind: str):
        super().__init__()
        self.kind = kind
        _store(self, weight, kind)

    def forward(self, ids):
        if self.kind == "bfloat16":
            return embedding_bf16(ids, self.weight)
        return embedding_int8(ids, self.weight, self.weight_scale)

    def logits(self, hidden):
        return _matmul(self, hidden, None)


def _linear(layer: nn.Layer, kind: str) -> nn.Layer:
    """float32 keeps the model's own (tensor-parallel) layer: no copy, and TP works as in training."""
    return layer if kind == "float32" else StepLinear(layer.weight, layer.bias, kind)


class StepBlock(nn.Layer):
    def __init__(self, block, kind: str):
        super().__init__()
        self.ops = load_ops()  # resolved here: to_static must not trace the loader
        attention, mlp = block.self_attention, block.mlp
        self.input_layernorm, self.post_attention_layernorm = block.input_layernorm, block.post_attention_layernorm
        self.query_key_value = _linear(attention.query_key_value, kind)
        self.dense = _linear(attention.dense, kind)
        self.dense_h_to_4h = _linear(mlp.dense_h_to_4h, kind)
        self.dense_4h_to_h = _linear(mlp.dense_4h_to_h, kind)
        self.post_ln_residual = block.post_ln_residual

    def forward(self, x, cache, slots, past, lens, slopes, layer: int):
        h = self.input_layernorm(x)
        attn = self.ops.cache_attention(self.query_key_value(h), cache, slots, past, lens, slopes, layer)[
            0
        ]  # [out, cache (in place)]
        x = (h if self.post_ln_residual else x) + self.dense(attn)
        h = self.post_attention_layernorm(x)
        return (h if self.post_ln_residual else x) + self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(h), approximate=True))


class StepModel(nn.Layer):
    """forward(input_ids [b, s], cache, slots [b], past [b], lens [b], picks [b, k])
    -> logits [b, k, vocab] at the picked positions."""

    def __init__(self, model, kind: str = "float32"):
        super().__init__()
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"weights {kind}: choose from {', '.join(WEIGHT_KINDS)}")
        config = model.config
        self.config, self.kind, self.parallel = config, kind, model.parallel
        bloom = model.bloom
        self.word_embeddings = (
            bloom.word_embeddings if kind == "float32" else TiedEmbedding(bloom.word_embeddings.weight, kind)
        )
        self.word_embeddings_layernorm = bloom.word_embeddings_layernorm
        self.h = nn.LayerList([StepBlock(block, kind) for block in bloom.h])
        self.ln_f = bloom.ln_f
        self.alibi_slopes = bloom.alibi_slopes  # this rank's heads
        self.local_heads = bloom.h[0].self_attention.local_heads
        self.eval()

    def forward(self, input_ids, cache, slots, past, lens, picks=None):
        """picks [b, k]: which of each row's new positions to return logits for -> [b, k, vocab].
        Decoding picks each row's last new token (the default); prompt scoring picks them all.
        Only picked positions go through the final norm and the LM head (vocabulary-wide rows)."""
        x = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        for i, block in enumerate(self.h):
            x = block(x, cache, slots, past, lens, self.alibi_slopes, i)
        if picks is None:
            picks = (lens - 1).clip(min=0).reshape([-1, 1])
        index = picks.unsqueeze(-1).expand([-1, -1, x.shape[-1]])
        hidden = self.ln_f(paddle.take_along_axis(x, index, axis=1))
        if self.kind == "float32" and self.parallel.tp_degree == 1:
            # our kernel reads the [vocab, hidden] table as stored (Paddle's transpose_y matmul: 2x slower at 8 rows)
            return linear_fp32(hidden, self.word_embeddings.weight)
        return gather_from_tp(self.word_embeddings.logits(hidden), self.parallel).astype("float32")
