"""Tensor-parallel layers (Megatron layout) that are plain layers at tensor_parallel_degree 1.

Parameter names and shapes follow PaddleNLP (`weight` is [in, out], shards are contiguous
slices: column-parallel along the last axis, row-parallel and the vocabulary along axis 0), so a
shard written here is the shard PaddleNLP writes and vice versa.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..runtime import parallel_context
from .collectives import copy_to_tp, max_over_tp, reduce_from_tp


def _divide(n: int, parts: int, what: str) -> int:
    if n % parts:
        raise ValueError(f"{what}={n} is not divisible by tensor_parallel_degree={parts}")
    return n // parts


def _normal(std: float):
    return paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=std))


_ZERO = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))


def affine(x, weight, bias):
    """x @ weight + bias over the last axis of x.

    On CPU in eager mode as one addmm over the flattened tokens: its backward sums the bias
    gradient inside the GEMM kernel's pass, where matmul + broadcast add (F.linear) runs a
    separate broadcast-reduce (measured forward + backward of [1024, 512] x [512, 2048] on 2 cores:
    60 ms with F.linear, 46 ms with addmm, 38 ms without a bias). Static graphs (export) and GPUs
    keep F.linear, which their fusion passes know. So does a frozen bias (LoRA): there is no bias
    gradient to save, and Paddle 3.3.1's addmm backward segfaults when its `input` has none.
    """
    if bias.stop_gradient or not (paddle.in_dynamic_mode() and x.place.is_cpu_place()):
        return F.linear(x, weight, bias)
    y = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return y.reshape(list(x.shape[:-1]) + [weight.shape[-1]])


class ColumnParallelLinear(nn.Layer):
    """y = x W + b with W's output columns split over ranks; the output stays split."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        tp = parallel_context().tp_degree
        self.out_per_rank = _divide(out_features, tp, "output features")
        self.weight = self.create_parameter([in_features, self.out_per_rank], attr=_normal(std))
        self.bias = self.create_parameter([self.out_per_rank], attr=_ZERO, is_bias=True)

    def forward(self, x):
        return affine(copy_to_tp(x), self.weight, self.bias)


class RowParallelLinear(nn.Layer):
    """y = x W + b with W's input rows split over ranks; the input arrives split, the output is summed."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        tp = parallel_context().tp_degree
        self.weight = self.create_parameter([_divide(in_features, tp, "input features"), out_features], attr=_normal(std))
        self.bias = self.create_parameter([out_features], attr=_ZERO, is_bias=True)

    def forward(self, x):
        if parallel_context().tp_degree == 1:
            return affine(x, self.weight, self.bias)
        return reduce_from_tp(paddle.matmul(x, self.weight)) + self.bias


class VocabParallelEmbedding(nn.Layer):
    """Embedding whose vocabulary rows are split over ranks; doubles as the tied LM head."""

    def __init__(self, vocab_size: int, hidden_size: int, std: float = 0.02):
        super().__init__()
        ctx = parallel_context()
        self.vocab_size = vocab_size
        self.rows = _divide(vocab_size, ctx.tp_degree, "vocab_size")
        self.start = ctx.tp_rank * self.rows
        self.weight = self.create_parameter([self.rows, hidden_size], attr=_normal(std))

    def forward(self, ids):
        if parallel_context().tp_degree == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mine = (local >= 0) & (local < self.rows)
        rows = F.embedding(paddle.where(mine, local, paddle.zeros_like(local)), self.weight)
        return reduce_from_tp(rows * mine.unsqueeze(-1).astype(rows.dtype))

    def logits(self, hidden):
        """This rank's slice of the vocabulary logits: [..., vocab_size / tp]."""
        return paddle.matmul(copy_to_tp(hidden), self.weight, transpose_y=True)


def parallel_cross_entropy(local_logits, labels, vocab_start: int, vocab_size: int, label_smoothing: float = 0.0, ignore_index: int = -100):
    """Mean token loss from vocabulary-split logits without gathering them.

    loss_t = (1 - eps) * (-log p[y_t]) + eps * mean_v(-log p[v])   (the usual label smoothing, as in
    torch.nn.CrossEntropyLoss(label_smoothing=eps)); positions whose label is ignore_index do not count.
    Returns (mean loss, number of counted tokens).
    """
    nll, counted = parallel_token_nll(local_logits, labels, vocab_start, vocab_size, label_smoothing, ignore_index)
    n_tokens = counted.sum()
    return nll.sum() / paddle.clip(n_tokens, min=1.0), n_tokens


def parallel_token_nll(local_logits, labels, vocab_start: int, vocab_size: int, label_smoothing: float = 0.0, ignore_index: int = -100):
    """Per-token (smoothed) NLL from vocabulary-split logits, flattened to [tokens]: (nll, counted).

    nll is 0 where the label is ignore_index; counted is 1.0 where it is not. Every rank of the
    tensor-parallel group gets the same values (sequence scores, e.g. DPO's log-probabilities,
    are sums of these).
    """
    logits = local_logits.astype("float32").reshape([-1, local_logits.shape[-1]])
    labels = labels.reshape([-1])
    if parallel_context().tp_degree == 1:
        nll = _whole_vocab_nll(logits, labels, label_smoothing, ignore_index)
    else:
        nll = _split_vocab_nll(logits, labels, vocab_start, vocab_size, label_smoothing)
    counted = (labels != ignore_index).astype("float32")
    return nll * counted, counted


def _whole_vocab_nll(logits, labels, label_smoothing: float, ignore_index: int):
    """Per-token (smoothed) NLL when one rank holds the whole vocabulary.

    Paddle's fused softmax-cross-entropy kernel makes one softmax pass forward and one pass
    backward over the [tokens, vocab] logits; the split-vocabulary formula below costs about five
    passes each way (measured at 1024 tokens x 32000: 62 ms vs 192 ms forward + backward).
    """
    nll = F.cross_entropy(logits, labels.unsqueeze(-1), ignore_index=ignore_index, reduction="none").reshape([-1])
    if label_smoothing > 0:
        mean_neg_log_p = paddle.logsumexp(logits, axis=-1) - logits.mean(axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * mean_neg_log_p
    return nll


def _split_vocab_nll(logits, labels, vocab_start: int, vocab_size: int, label_smoothing: float):
    """Per-token (smoothed) NLL from this rank's vocabulary slice, summed over the group."""
    shifted = logits - max_over_tp(logits.max(axis=-1, keepdim=True).detach())
    log_z = paddle.log(reduce_from_tp(paddle.exp(shifted).sum(axis=-1)))
    local = labels - vocab_start
    mine = (local >= 0) & (local < logits.shape[-1])
    safe = paddle.where(mine, local, paddle.zeros_like(local)).unsqueeze(-1)
    picked = paddle.take_along_axis(shifted, safe, axis=-1).squeeze(-1) * mine.astype("float32")
    nll = log_z - reduce_from_tp(picked)
    if label_smoothing > 0:
        mean_logit = reduce_from_tp(shifted.sum(axis=-1)) / vocab_size
        nll = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - mean_logit)
    return nll
