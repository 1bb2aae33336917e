"""The whole decode loop (prefill, then one token per step) as one Layer that `paddle.jit.to_static` turns into a program.

Why a fixed-size cache: a static `while` loop needs loop variables whose shapes do not change
between iterations, so the KV cache cannot grow by concatenation. We allocate it once with
`max_new_tokens` free slots at the *front* and roll it: each step the model's own forward appends
the new key/value (past length C -> C + 1) and we drop the oldest slot, which is always still
free. Free slots carry attention-mask 0, so to the model they are exactly left padding: ALiBi
positions (cumsum of the mask) and masking are the ones of the dynamic, growing-cache loop, and
the program calls the same `BloomForCausalLM.forward` as training and dynamic generation do.

A prefix adapter's keys/values are computed once at export and stored as one parameter
[2 * n_layer, 1, heads, n_prefix, head_dim] of this layer, so they are part of the program.

Everything a user may change per call is a runtime input (see `INPUTS`), including the decode
strategy: greedy and sampling are both in the program and `strategy` (0 greedy, 1 sampling)
selects per call, as a branch (greedy does not pay for the vocabulary sorts of top-k/top-p).
Logits processing is paddlebloom.sampling's; the uniform numbers come from its seeded generator, so a
given `seed` gives the same tokens in dygraph, in the exported program and across runs.
"""
import paddle
import paddle.nn as nn

from .. import sampling

# name, shape, dtype of every runtime input, in call order (the exported program's feed names).
INPUTS = (
    ("input_ids", [None, None], "int64"),
    ("attention_mask", [None, None], "int64"),
    ("max_new_tokens", [1], "int64"),
    ("strategy", [1], "int64"),
    ("top_k", [1], "int64"),
    ("top_p", [1], "float32"),
    ("temperature", [1], "float32"),
    ("repetition_penalty", [1], "float32"),
    ("eos_token_id", [1], "int64"),
    ("pad_token_id", [1], "int64"),
    ("seed", [1], "int64"),
)
GREEDY, SAMPLING = sampling.GREEDY, sampling.SAMPLING

class GenerationProgram(nn.Layer):
    """`forward(*INPUTS) -> ids [batch, max_new_tokens]`: each row's tokens, its EOS, then pad ids."""

    def __init__(self, model: nn.Layer, prefix_kv=None):
        super().__init__()
        self.model = model  # a BloomForCausalLM (LoRA already merged)
        config = model.config
        self.n_layer, self.heads, self.head_dim, self.vocab_size = config.n_layer, config.n_head, config.head_dim, config.vocab_size
        self.prefix_kv = None
        if prefix_kv is not None:
            self.prefix_kv = self.create_parameter(prefix_kv.shape, dtype=prefix_kv.dtype)
            self.prefix_kv.set_value(prefix_kv)
            self.prefix_kv.stop_gradient = True

    def _initial_cache(self, batch, free, dtype):
        zeros = paddle.zeros([batch, self.heads, free, self.head_dim], dtype=dtype)
        if self.prefix_kv is None:
            return [(zeros, zeros) for _ in range(self.n_layer)], 0
        batch_zeros = paddle.zeros([batch, 1, 1, 1], dtype=dtype)  # broadcasts the prefix over the batch
        n_prefix = self.prefix_kv.shape[3]
        per = [paddle.concat([zeros, batch_zeros + self.prefix_kv[i]], axis=2) for i in range(2 * self.n_layer)]
        return [(per[i], per[self.n_layer + i]) for i in range(self.n_layer)], n_prefix

    def forward(self, input_ids, attention_mask, max_new_tokens, strategy, top_k, top_p, temperature, repetition_penalty, eos_token_id, pad_token_id, seed):
        batch = paddle.shape(input_ids)[0]
        dtype = self.model.bloom.word_embeddings.weight.dtype
        caches, n_prefix = self._initial_cache(batch, max_new_tokens, dtype)
        # [free slots (0) | prefix (1) | prompt (its own mask)]
        parts = [paddle.zeros([batch, max_new_tokens], dtype="int64"), attention_mask.astype("int64")]
        if n_prefix:
            parts.insert(1, paddle.ones([batch, n_prefix], dtype="int64"))
        mask = paddle.concat(parts, axis=1)
        out = self.model(input_ids, attention_mask=mask, past_key_values=caches, use_cache=True, last_logits_only=True)
        caches = out.past_key_values

        seen = sampling.seen_tokens(input_ids, attention_mask, self.vocab_size)
        rng = sampling.initial_state(seed, batch)
        token, rng = sampling.choose_next(out.logits[:, -1], seen, strategy, top_k, top_p, temperature, repetition_penalty, rng)
        finished = token == eos_token_id.reshape([1, 1])
        positions = paddle.arange(0, max_new_tokens, dtype="int64").unsqueeze(0)
        ids = paddle.where(positions == 0, token, paddle.zeros_like(positions) + pad_token_id.reshape([1, 1]))
        seen = sampling.mark_seen(seen, token)
        flat = [t for kv in caches for t in kv]
        step = paddle.ones([1], dtype="int64")
        while paddle.logical_and(step < max_new_tokens, paddle.logical_not(paddle.all(finished))):
            call_mask = paddle.concat([mask, paddle.ones([batch, 1], dtype="int64")], axis=1)
            past = [(flat[2 * i], flat[2 * i + 1]) for i in range(self.n_layer)]
            out = self.model(token, attention_mask=call_mask, past_key_values=past, use_cache=True, last_logits_only=True)
            # Drop the oldest slot: a free one (there are max_new_tokens of them, at most max_new_tokens - 1 steps).
            flat = [t[:, :, 1:] for kv in out.past_key_values for t in kv]
            mask = call_mask[:, 1:]
            new, rng = sampling.choose_next(out.logits[:, -1], seen, strategy, top_k, top_p, temperature, repetition_penalty, rng)
            new = paddle.where(finished, paddle.zeros_like(new) + pad_token_id.reshape([1, 1]), new)
            ids = paddle.where(positions == step.reshape([1, 1]), new, ids)
            finished = paddle.logical_or(finished, new == eos_token_id.reshape([1, 1]))
            seen = sampling.mark_seen(seen, new)
            token = new
            step = step + 1
        return ids
