"""Prefix tuning for BLOOM: learned key/value vectors prepended to every layer's attention.

The encoder maps prefix positions to [2 * n_layer, n_head, head_dim] per position (PaddleNLP's
layout: the first n_layer entries are keys, the rest values). Under tensor parallelism each
rank attends with its own heads, so it takes its head slice of the prefix; the encoder itself is
replicated and its gradient summed over ranks. PaddleNLP instead splits the flat vector, which
mixes layers and heads (paddlenlp 3.0.0b4: loss 6.1807 at TP=2 vs 6.2189 at TP=1 with the same
prefix weights, a [16, 256] merged weight instead of [8, 256]; the README's "Upstream defects").
"""

from contextlib import contextmanager

import numpy as np
import paddle
import paddle.nn as nn

from ..adapter import FileAdapter, adapter_of, attach
from ..parallel.collectives import copy_to_tp
from .config import PREFIX_CONFIG, PREFIX_WEIGHTS, PrefixConfig


class PrefixModel(nn.Layer):
    """Wraps a BloomForCausalLM; called with the same arguments as the model it wraps.

    The caller's attention_mask covers the caller's tokens only; the prefix's positions are
    prepended to it here, and to the cache on the first call.
    """

    def __init__(self, model: nn.Layer, config: PrefixConfig, seed: int = 0):
        super().__init__()
        base = model.config
        config.num_hidden_layers, config.num_attention_heads, config.hidden_size = (
            base.n_layer,
            base.n_head,
            base.hidden_size,
        )
        self.model, self.prefix_config, self.config, self.parallel = model, config, base, model.parallel
        width = 2 * base.n_layer * base.hidden_size
        if config.prefix_projection:
            self.prefix_encoder = nn.Sequential(
                nn.Embedding(config.num_prefix_tokens, base.hidden_size),
                nn.Linear(base.hidden_size, config.prefix_projection_hidden_size),
                nn.Tanh(),
                nn.Linear(config.prefix_projection_hidden_size, width),
            )
        else:
            self.prefix_encoder = nn.Sequential(nn.Embedding(config.num_prefix_tokens, width))
        self.prefix_dropout = nn.Dropout(config.prefix_dropout)
        self.prefix_disabled = False  # Prefix.disabled: the wrapped model alone
        # Xavier-uniform weights, zero biases, from a seeded NumPy generator: the same prefix
        # at every tensor-parallel degree (the encoder is replicated, never split).
        rng = np.random.RandomState(seed)
        for _, param in sorted(self.prefix_encoder.named_parameters()):
            if len(param.shape) == 2:
                bound = np.sqrt(6.0 / (param.shape[0] + param.shape[1]))
                param.set_value(rng.uniform(-bound, bound, size=param.shape).astype(np.float32))
            else:
                param.set_value(np.zeros(param.shape, dtype=np.float32))
        for param in self.model.parameters():
            param.stop_gradient = True

    def prefix_past_key_values(self, batch_size: int):
        """Per layer (key, value), each [batch, local_heads, num_prefix_tokens, head_dim]."""
        ctx, cfg = self.parallel, self.config
        n_tokens = self.prefix_config.num_prefix_tokens
        flat = self.prefix_dropout(self.prefix_encoder(paddle.arange(n_tokens, dtype="int64")))
        per_head = copy_to_tp(flat, ctx).reshape([n_tokens, 2 * cfg.n_layer, cfg.n_head, cfg.head_dim])
        heads = cfg.n_head // ctx.tp_degree
        mine = per_head[:, :, ctx.tp_rank * heads : (ctx.tp_rank + 1) * heads]
        mine = (
            mine.transpose([1, 2, 0, 3])
            .unsqueeze(1)
            .expand([2 * cfg.n_layer, batch_size, heads, n_tokens, cfg.head_dim])
        )
        return [(mine[i], mine[cfg.n_layer + i]) for i in range(cfg.n_layer)]

    def stacked_prefix(self) -> np.ndarray:
        """The prefix's keys and values as [2 * n_layer, local_heads, n_prefix, head_dim] (keys first),
        as a deployed model copies them into each request's cache. Switches to eval mode: no
        prefix dropout in what is baked in."""
        self.eval()
        with paddle.no_grad():
            kv = self.prefix_past_key_values(1)
        return np.stack([k.numpy()[0] for k, _ in kv] + [v.numpy()[0] for _, v in kv])

    def forward(self, input_ids, attention_mask=None, labels=None, past_key_values=None, use_cache=False, **kwargs):
        if self.prefix_disabled:
            return self.model(
                input_ids,
                attention_mask=attention_mask,
                labels=labels,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )
        b, s = input_ids.shape
        n_prefix = self.prefix_config.num_prefix_tokens
        if past_key_values is None:
            past_key_values = self.prefix_past_key_values(b)
        if attention_mask is None:
            attention_mask = paddle.ones([b, past_key_values[0][0].shape[2] - n_prefix + s], dtype="int64")
        full_mask = paddle.concat([paddle.ones([b, n_prefix], dtype=attention_mask.dtype), attention_mask], axis=1)
        return self.model(
            input_ids,
            attention_mask=full_mask,
            labels=labels,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )

    def set_recompute(self, enabled: bool) -> None:
        self.model.set_recompute(enabled)


class Prefix(FileAdapter):
    """Prefix tuning as an Adapter: `apply` wraps the model in a PrefixModel."""

    name = "prefix"
    config_class, config_file, weights_file = PrefixConfig, PREFIX_CONFIG, PREFIX_WEIGHTS

    def apply(self, model: nn.Layer, seed: int = 0) -> PrefixModel:
        return attach(PrefixModel(model, self.config, seed=seed), self)

    def trainable_state(self, model: PrefixModel):
        return {k: v for k, v in model.state_dict().items() if k.startswith("prefix_encoder.")}

    def full_weights(self, model: PrefixModel):
        return {k: v.numpy() for k, v in self.trainable_state(model).items()}  # replicated: already full size

    def load_weights(self, model: PrefixModel, directory: str) -> None:
        state = self.read_weights(directory)
        for name, param in self.trainable_state(model).items():
            if name not in state or tuple(state[name].shape) != tuple(param.shape):
                raise ValueError(
                    f"{directory}: prefix weight {name} missing or of another shape; check "
                    "--num_prefix_tokens/--prefix_projection"
                )
            param.set_value(state[name])

    def merge(self, model: PrefixModel):
        """A prefix cannot be folded into weights: the wrapped model (its own adapter merged), and
        the prefix files to write beside it."""
        base, _ = adapter_of(model.model).merge(model.model)
        return base, self.writer(self.full_weights(model))

    def step_parts(self, model: PrefixModel):
        return model.model, model.stacked_prefix()

    @contextmanager
    def disabled(self, model: PrefixModel):
        model.prefix_disabled = True
        try:
            yield model
        finally:
            model.prefix_disabled = False
