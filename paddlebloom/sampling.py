"""Choosing the next token from logits — one implementation for dygraph and static programs.

Every knob (temperature, top_k, top_p, repetition_penalty, greedy or sampling) is a tensor and
no Python branch looks at tensor values, so `paddle.jit.to_static` traces the same code the
dynamic decoder runs. Randomness enters only as a uniform number per row, from a seeded
Park-Miller generator below: `paddle.multinomial` in an exported program draws from the global
generator (seed fixed at export time), so a runtime seed could not reproduce a sample; this
generator needs only int64 multiply and modulo, so the same seed gives the same draws in dygraph,
in the static program and on every machine. Paddle's `top_p_sampling` kernel is not used: it has no
CPU kernel (STACK.md defect 6); top-p is sort + cumulative sum here.

Conventions: logits [batch, vocab] float32; `seen` [batch, vocab] 1.0 where the token occurred
in the prompt or output (for the repetition penalty); scalars are 0-d or [1] tensors.
"""
import paddle
import paddle.nn.functional as F

NEG_INF = -1e30


def seen_tokens(input_ids, attention_mask, vocab_size: int):
    """[batch, vocab] with 1.0 where a real (unmasked) prompt token occurs."""
    seen = paddle.zeros([input_ids.shape[0], vocab_size], dtype="float32")
    return paddle.put_along_axis(seen, input_ids, attention_mask.astype("float32"), axis=1, reduce="add").clip(max=1.0)


def mark_seen(seen, tokens):
    """Add this step's tokens [batch, 1] to `seen`."""
    return paddle.put_along_axis(seen, tokens, paddle.ones_like(tokens, dtype="float32"), axis=1, reduce="assign")


def repetition_penalty(logits, seen, penalty):
    """CTRL / Hugging Face semantics: seen tokens' positive logits divided, negative multiplied."""
    penalised = paddle.where(logits > 0, logits / penalty, logits * penalty)
    return paddle.where(seen > 0, penalised, logits)


def top_k_mask(logits, top_k):
    """Keep the top_k largest logits of each row (top_k <= 0: keep all)."""
    vocab = logits.shape[-1]
    k = paddle.where(top_k > 0, paddle.minimum(top_k, paddle.full_like(top_k, vocab)), paddle.full_like(top_k, vocab))
    ordered = paddle.sort(logits, axis=-1, descending=True)
    index = (k.astype("int64") - 1).reshape([1, 1]).expand([logits.shape[0], 1])
    threshold = paddle.take_along_axis(ordered, index, axis=-1)
    return paddle.where(logits < threshold, paddle.full_like(logits, NEG_INF), logits)


def top_p_mask(logits, top_p):
    """Keep the smallest set of most likely tokens whose probability reaches top_p (>= 1: keep all)."""
    probs = F.softmax(logits, axis=-1)
    ordered = paddle.sort(probs, axis=-1, descending=True)
    before = paddle.cumsum(ordered, axis=-1) - ordered  # mass strictly above each token
    keep = before < top_p
    smallest_kept = paddle.min(paddle.where(keep, ordered, paddle.full_like(ordered, 2.0)), axis=-1, keepdim=True)
    return paddle.where(probs >= smallest_kept, logits, paddle.full_like(logits, NEG_INF))


def sampling_distribution(logits, seen, temperature, top_k, top_p, penalty):
    """Probabilities after repetition penalty, temperature, top-k and top-p."""
    logits = repetition_penalty(logits.astype("float32"), seen, penalty)
    logits = logits / paddle.maximum(temperature, paddle.full_like(temperature, 1e-6))
    return F.softmax(top_p_mask(top_k_mask(logits, top_k), top_p), axis=-1)


def draw(probs, u):
    """Inverse-CDF sample of each row with its uniform number u [batch, 1] in [0, 1)."""
    cdf = paddle.cumsum(probs, axis=-1)
    index = (cdf <= u * cdf[:, -1:]).astype("int64").sum(axis=-1, keepdim=True)
    return paddle.minimum(index, paddle.full_like(index, probs.shape[-1] - 1))


GREEDY, SAMPLING = 0, 1
_MODULUS, _MULTIPLIER = 2147483647, 48271


def next_uniform(state):
    """Advance the per-row generator state [b, 1]; return (state, uniform in (0, 1) [b, 1])."""
    state = (state * _MULTIPLIER) % _MODULUS
    return state, state.astype("float32") / float(_MODULUS)


def initial_state(seed, batch):
    """A distinct non-zero state per row from the runtime `seed` [1]."""
    rows = paddle.arange(0, batch, dtype="int64").unsqueeze(-1)
    state = (seed.reshape([1, 1]) % (_MODULUS - 1) * 7919 + rows * 104729 + 1) % (_MODULUS - 1) + 1
    for _ in range(3):  # warm-up draws decorrelate neighbouring seeds
        state, _ = next_uniform(state)
    return state


def choose_next(logits, seen, strategy, top_k, top_p, temperature, penalty, rng):
    """The next token [batch, 1] and the advanced generator state.

    Greedy takes the argmax after the repetition penalty (no vocabulary sorts); sampling draws
    from the penalised, tempered, top-k/top-p distribution with one uniform per row.
    """
    logits = logits.astype("float32")
    if strategy.reshape([]) == GREEDY:
        token = paddle.argmax(repetition_penalty(logits, seen, penalty), axis=-1, keepdim=True)
    else:
        rng, uniform = next_uniform(rng)
        token = draw(sampling_distribution(logits, seen, temperature, top_k, top_p, penalty), uniform)
    return token, rng
