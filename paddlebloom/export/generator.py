"""The random numbers of the exported decode loop: a seeded generator that works inside a static program.

Why our own generator: `paddle.multinomial` in an exported program draws from the process's
global generator, whose seed is fixed at export time or random at run time, so neither a
runtime `seed` input nor dygraph/static agreement is possible with it. Park-Miller's minimal
standard generator needs only int64 multiply and modulo (products stay below 2**47), so the
same seed gives the same draws in dygraph, in the program, on every machine.
"""
import paddle

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
